"""Event-loop time of one controller plan for a 16-row batch against 1, 2 and 4 fallback rungs.

Run from the repository root: `.venv/bin/python experiments/quantize_prune/plan_cost.py`; writes
plan_cost.json beside this file. A primary of cap 3 (as the MNIST-1D model) with an accuracy
table, rungs scored at their cap and measured at a full batch so that none beats another (each
is planned), 16 requests asking for the cap with 20-35 ms of a 50 ms SLA already waited, at a
pace of 2 ms: the load under which the ladder is consulted. Medians of 5 rounds of 300 plans.
"""

import json
import pathlib
import statistics
import time

from adaptive.serving.controller import Controller
from adaptive.serving.decisions import Request
from adaptive.serving.fallbacks import Fallback

ACCURACY = {(None, s): 0.6 + 0.03 * s for s in range(1, 4)}


def controller(rungs: int) -> Controller:
    ladder = tuple(Fallback(f"r{i}", 3, {3: 0.69 - 0.01 * i}) for i in range(rungs))
    c = Controller(3, 50.0, fallbacks=ladder, accuracy=ACCURACY, max_batch=16)
    for rows in (1, 4, 16):
        for steps in (1, 2, 3):
            c.observe("primary", steps, 0.3 + 0.05 * steps * rows, rows=rows)
        for i, rung in enumerate(ladder):
            c.observe(rung.name, 3, 0.2 + (0.03 - 0.005 * i) * rows, rows=rows)
    return c


def main() -> None:
    requests = [Request(3, 20.0 + i, i % 3, 3) for i in range(16)]
    rows = []
    for rungs in (1, 2, 4):
        c = controller(rungs)
        assert len(c._rungs(requests)) == rungs  # every rung is planned
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(300):
                c.plan(requests, 2.0)
            rounds.append(1e3 * (time.perf_counter() - start) / 300)
        rows.append({"rungs": rungs, "batch": 16, "ms_per_plan": round(statistics.median(rounds), 4)})
        print(rows[-1])
    out = pathlib.Path(__file__).with_name("plan_cost.json")
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
