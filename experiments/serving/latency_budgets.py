"""Served latency budgets, kept or not: the cost model's price alone against the server's own runs.

    python experiments/serving/latency_budgets.py [--workdir runs/latency-budgets] [--requests 400]
        [--rate 200] [--repeats 3] [--tail-quantile 0.95] [--json experiments/serving/latency_budgets.json]

Trains configs/parity.py:tiny, calibrates its cost model and exports it (once, in WORKDIR), then
serves one schedule of requests per repeat (Poisson arrivals at RATE requests/s, each with a
`latency_ms` budget log-uniform from the cost model's one-step p99 to 30 times it, sent by a load
generator in another process) from two servers in turn: `static`, whose budgets are priced by
the cost model alone (what every policy did before the adaptive one priced latency at its own
runs), and `adaptive`, which also prices them at the p99 of the server's recent runs and refuses
what those cannot keep. At this rate neither server is loaded, so the difference is the pricing.
Per policy and repeat: requests served, served runs that kept their budget (`run_ms` within it),
rejected. The machine's speed decides the numbers, not the code alone: the load generator shares
the CPU with the server, as a client on one machine does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SPREAD = 30.0  # budgets from the one-step p99 up to this many times it
BANDS = ((0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, np.inf))  # budget ranges, ms, the rows break down by


def _client(port: int, requests: int, rate: float, seed: int, low: float) -> None:
    """Sends the schedule and prints one JSON line: the budget, HTTP status and answer of each."""
    import aiohttp

    rng = np.random.default_rng(seed)
    budgets = np.exp(rng.uniform(np.log(low), np.log(low * SPREAD), requests))
    xs = rng.choice([-1.0, 0.0, 1.0], (requests, 16))
    sends = np.cumsum(rng.exponential(1 / rate, requests))

    async def main():
        async with aiohttp.ClientSession() as session:

            async def one(i):
                await asyncio.sleep(sends[i])
                body = {"x": xs[i].tolist(), "budget": float(budgets[i]), "unit": "latency_ms"}
                async with session.post(f"http://127.0.0.1:{port}/predict", json=body) as r:
                    return float(budgets[i]), r.status, await r.json()

            return await asyncio.gather(*(one(i) for i in range(requests)))

    print(json.dumps(asyncio.run(main())))


def _artifact(workdir: Path) -> Path:
    """configs/parity.py:tiny trained, calibrated and exported in `workdir` (reused when there)."""
    art = workdir / "art"
    if (art / "meta.json").exists():
        return art
    root = Path(__file__).resolve().parents[2]
    adaptive = [sys.executable, "-m", "adaptive.cli"]
    run = workdir / "run"
    subprocess.run([*adaptive, "train", "--config", f"{root}/configs/parity.py:tiny", "--workdir", str(run),
                    "--config.logging.wandb=disabled"], check=True)  # fmt: skip
    subprocess.run([*adaptive, "calibrate", "--workdir", str(run)], check=True)
    subprocess.run([*adaptive, "export", "--workdir", str(run), "--out", str(art)], check=True)
    return art


def _kept_share(answers: list, low: float, high: float) -> float | None:
    """Of the requests whose budget is in [low, high) ms, the share answered within it."""
    asked = [(budget, a) for budget, code, a in answers if low <= budget < high]
    kept = sum("run_ms" in a and a["run_ms"] <= budget for budget, a in asked)
    return round(kept / len(asked), 4) if asked else None


def _serve(art: Path, policy: str, requests: int, rate: float, seed: int, tail_quantile: float) -> dict:
    from adaptive.serving.controller import Controller
    from adaptive.serving.engine import Engine
    from adaptive.serving.server import Server

    engine = Engine.from_artifact(art)
    low = float(engine.table["latency_ms_p99"][0])

    async def main():
        controller = Controller(engine.cap, 20.0, mode=policy)
        for times in controller.service.values():
            times.tail_quantile = tail_quantile
        server = Server(engine, controller)
        port = await server.start("127.0.0.1", 0)
        await asyncio.sleep(1.0)  # idle a moment, as a server between bursts is
        client = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", str(port), str(requests), str(rate), str(seed), str(low),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await client.communicate()
        await server.stop()
        return json.loads(out)

    answers = asyncio.run(main())
    served = [(budget, a["run_ms"]) for budget, code, a in answers if code == 200]
    kept = sum(run_ms <= budget for budget, run_ms in served)
    runs = np.array([run_ms for _, run_ms in served]) if served else np.zeros(1)
    return {
        "policy": policy,
        "seed": seed,
        "tail_quantile": tail_quantile,
        "requests": requests,
        "served": len(served),
        "kept": kept,
        "kept_share_of_served": round(kept / max(len(served), 1), 4),
        "rejected": sum(code == 503 for _, code, _ in answers),
        "refused_400": sum(code == 400 for _, code, _ in answers),
        # served and kept, of the requests whose budget is in each range (ms)
        "kept_share_by_budget": {f"{lo:g}-{hi:g}": _kept_share(answers, lo, hi) for lo, hi in BANDS},
        "run_ms_p50": round(float(np.quantile(runs, 0.5)), 3),
        "run_ms_p99": round(float(np.quantile(runs, 0.99)), 3),
        "budget_ms_range": [round(low, 3), round(low * SPREAD, 3)],
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        port, requests, rate, seed, low = argv[1:]
        return _client(int(port), int(requests), float(rate), int(seed), float(low))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/latency-budgets")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tail-quantile", type=float, default=0.95, help="of the server's runs: a latency price")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    art = _artifact(Path(args.workdir))
    rows = [_serve(art, policy, args.requests, args.rate, seed, args.tail_quantile) for seed in range(args.repeats)
            for policy in ("static", "adaptive")]  # fmt: skip
    bands = [f"{lo:g}-{hi:g}" for lo, hi in BANDS]
    print(f"{'policy':9} {'seed':>4} {'served':>6} {'kept':>5} {'kept/served':>11} {'rejected':>8} {'run p50':>8} "
          f"{'p99':>6}  kept of asked, by budget (ms): {'  '.join(bands)}")  # fmt: skip
    for r in rows:
        by_band = "  ".join(f"{r['kept_share_by_budget'][b] or 0:.2f}" for b in bands)
        print(f"{r['policy']:9} {r['seed']:>4} {r['served']:>6} {r['kept']:>5} {r['kept_share_of_served']:>11.3f} "
              f"{r['rejected']:>8} {r['run_ms_p50']:>8.3f} {r['run_ms_p99']:>6.3f}  {by_band}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
