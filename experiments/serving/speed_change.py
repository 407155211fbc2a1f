"""After a burst, at light load: how soon the controller prices runs at the machine's speed again.

    python experiments/serving/speed_change.py [--seeds 5] [--json experiments/serving/speed_change.json]

A replay of the serving controller's plans against a machine of known cost, on a simulated
clock: the controller and its service-time windows are the server's own (adaptive/serving),
the runs' times are drawn, not measured, so the figures are about the pricing, not this CPU.
Two scenarios, each at three slowdowns:

- `mixed`: 300 quiet runs of every step count (1 to 8) and batch size (1 to 32), 50 ms apart,
  costing 0.5 + 0.45 steps + 0.05 steps x rows ms; then a burst of 200 back-to-back batches
  taking `slowdown` times that (the machine contended); then a lone client, one request every
  2 s, each run back at the quiet cost.
- `full_batches`: 50 quiet lone runs at full depth, 4 ms each; then 200 runs all at full depth
  whose time grows with their rows (`slowdown` x 10 ms at one row to twice that at 32), so no fit
  can split a run from its steps; then the lone client.

Every run's time has lognormal noise (sigma 0.2 quiet, 0.3 in the burst). The SLA is 15 ms, so a
lone request's 4.5 ms run fits it with room to spare at the quiet speed and not at the burst's.
Per scenario, slowdown, seed and policy, over the lone client's 250 requests: how many were
served below full depth (`degraded`), rejected, and the index of the first served at full depth.
`follow` is the server as built (`ServiceTimes.follow_speed`: a streak of runs off their
reference by 1.5x rescales the window's older runs); `window` leaves the window to renew by
new runs alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adaptive.evaluation.tables import print_table
from adaptive.serving.controller import Controller
from adaptive.serving.decisions import Request

CAP, SLA_MS, LONE_REQUESTS, LONE_GAP_S = 8, 15.0, 250, 2.0
SLOWDOWNS = {"mixed": (2.0, 3.0, 5.0), "full_batches": (1.0, 2.0, 4.0)}


def quiet_ms(steps: int, rows: int) -> float:
    return 0.5 + 0.45 * steps + 0.05 * steps * rows


def replay(scenario: str, slowdown: float, seed: int, follow: bool) -> dict:
    rng = np.random.default_rng(seed)
    now = [0.0]
    controller = Controller(CAP, SLA_MS, max_batch=32)
    controller.clock = lambda: now[0]
    for times in controller.service.values():
        times.clock, times.follow_speed = controller.clock, follow

    def ran(steps: int, rows: int, ms: float) -> None:
        controller.observe("primary", steps, ms, rows)

    if scenario == "mixed":
        for _ in range(300):
            steps, rows = int(rng.integers(1, CAP + 1)), int(rng.integers(1, 33))
            now[0] += 0.05
            ran(steps, rows, quiet_ms(steps, rows) * rng.lognormal(0, 0.2))
        for _ in range(200):
            steps, rows = int(rng.integers(1, CAP + 1)), int(rng.integers(8, 33))
            ms = slowdown * quiet_ms(steps, rows) * rng.lognormal(0, 0.3)
            now[0] += ms / 1e3
            ran(steps, rows, ms)
        lone_ms = quiet_ms
    else:
        for _ in range(50):
            now[0] += 0.5
            ran(CAP, 1, 4.0 * rng.lognormal(0, 0.2))
        for _ in range(200):
            rows = int(rng.choice((1, 4, 8, 16, 32)))
            ms = slowdown * 10.0 * (1 + rows / 32) * rng.lognormal(0, 0.3)
            now[0] += ms / 1e3
            ran(CAP, rows, ms)
        lone_ms = lambda steps, rows: 4.0 * steps / CAP  # noqa: E731
    served = []
    for _ in range(LONE_REQUESTS):
        now[0] += LONE_GAP_S
        decision = controller.plan([Request(CAP, 0.1)], controller.batch_time_ms(1, 1 / LONE_GAP_S))[0]
        served.append(decision.steps if decision.model else 0)
        if decision.model:
            ran(decision.steps, 1, lone_ms(decision.steps, 1) * rng.lognormal(0, 0.2))
    first_full = next((i for i, steps in enumerate(served) if steps == CAP), None)
    return {
        "scenario": scenario,
        "slowdown": slowdown,
        "seed": seed,
        "policy": "follow" if follow else "window",
        "requests": LONE_REQUESTS,
        "degraded": sum(0 < steps < CAP for steps in served),
        "rejected": served.count(0),
        "first_full_depth": first_full,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="where the summary and every run go (one JSON object)")
    args = parser.parse_args(argv)
    rows = [
        replay(scenario, slowdown, seed, follow)
        for scenario, slowdowns in SLOWDOWNS.items()
        for slowdown in slowdowns
        for follow in (False, True)
        for seed in range(args.seeds)
    ]
    table = []
    for key in dict.fromkeys((r["scenario"], r["slowdown"], r["policy"]) for r in rows):
        runs = [r for r in rows if (r["scenario"], r["slowdown"], r["policy"]) == key]
        late = [r["first_full_depth"] if r["first_full_depth"] is not None else LONE_REQUESTS for r in runs]
        table.append(
            {
                "scenario": key[0],
                "slowdown": key[1],
                "policy": key[2],
                "degraded_mean": float(np.mean([r["degraded"] for r in runs])),
                "degraded_max": max(r["degraded"] for r in runs),
                "rejected_max": max(r["rejected"] for r in runs),
                "first_full_depth_max": max(late),
            }
        )
    print_table(table, list(table[0]))
    if args.json is not None:  # the table's figures and the runs they come from
        args.json.write_text(json.dumps({"summary": table, "runs": rows}, indent=1) + "\n")
        print(f"wrote {len(table)} summary rows and {len(rows)} runs to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
