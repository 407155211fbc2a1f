"""An open-loop load generator for `adaptive serve`, run in its own process.

Arrivals are scheduled in advance (no request waits for another's answer, so a slow server
cannot slow the offered load: no coordinated omission), and latency is measured from each
request's *scheduled* arrival to its answer. Patterns:

    poisson   exponential gaps at `rate`
    gamma     Gamma gaps with coefficient of variation `cv` (> 1: bursty) at mean `rate`
    spike     `rate`, then `spike` x `rate` for the middle third, then `rate` again
    shift     `rate`, with the second half drawn from the hardest inputs (parity: the top
              quarter of difficulties; other data: inputs with added noise)

Requests are drawn from the artifact's *test* split: the server's choices (its accuracy tables)
are made on validation, and what it is judged on must be data it never chose on. One process
runs each pattern `--repeats` times (seeds `--seed`, `--seed` + 1, ...; every policy gets the
same schedules and inputs), one run after the other, each after the last one's answers are in.

The client is our own lean keep-alive HTTP/1.1 one on uvloop (`adaptive.bench.http_pool`): it shares the
server's cores, and aiohttp's client cost more CPU per request than the server did.

Every request is accounted for: sent = answered (ok, degraded, fallback) + rejected + deferred
+ errors. `summarize` gives p50/p95/p99/p99.9 latency, the SLA violation rate (late, rejected,
deferred or failed), throughput, goodput (on-time answers per second), accuracy of the answers,
effective accuracy (a late or missing answer counts as wrong), and FLOPs per correct answer.

    python -m adaptive.bench.loadgen --url http://127.0.0.1:8000 --artifact ART --pattern spike,gamma \\
        --rate 200 --duration 10 --repeats 3 --out runs.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import time
from pathlib import Path

import numpy as np
import uvloop

from adaptive.bench.http_pool import ConnectionPool
from adaptive.inference.artifact_meta import read_meta

PATTERNS = ("poisson", "gamma", "spike", "shift")
ANSWERED = ("ok", "degraded", "fallback")


def schedule(pattern: str, rate: float, duration_s: float, seed: int = 0, *, cv: float = 3.0, spike: float = 3.0):
    """(arrival times in seconds from the start, which requests draw hard inputs)."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r} is not one of {PATTERNS}")
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    rng = np.random.default_rng(seed)

    def arrivals(rate_now: float, start: float, end: float, gaps) -> np.ndarray:
        count = int((end - start) * rate_now * 1.5) + 20
        times = start + np.cumsum(gaps(rate_now, count))
        return times[times < end]

    exponential = lambda r, n: rng.exponential(1.0 / r, n)  # noqa: E731
    if pattern == "gamma":
        shape = 1.0 / cv**2  # mean 1/rate, std cv/rate
        times = arrivals(rate, 0.0, duration_s, lambda r, n: rng.gamma(shape, 1.0 / (r * shape), n))
    elif pattern == "spike":
        third = duration_s / 3
        times = np.concatenate(
            [
                arrivals(rate, 0.0, third, exponential),
                arrivals(rate * spike, third, 2 * third, exponential),
                arrivals(rate, 2 * third, duration_s, exponential),
            ]
        )
    else:
        times = arrivals(rate, 0.0, duration_s, exponential)
    hard = times >= duration_s / 2 if pattern == "shift" else np.zeros(len(times), bool)
    return times, hard


def examples(meta: dict, seed: int = 0, split: str = "test"):
    """(inputs, labels, hard inputs, their labels) from `split` of the artifact's data."""
    from adaptive import config as config_lib
    from adaptive import data

    cfg = config_lib.from_dict(meta["config"])
    source = data.load_split(cfg.data, split)
    batch = source.read_batch(np.arange(min(len(source), 4096)))
    x, y = batch["x"].astype(np.float32), batch["y"].astype(np.int64)
    difficulty = batch.get("difficulty")
    if difficulty is not None and difficulty.max() > 0:
        hard = difficulty >= np.quantile(difficulty, 0.75)
        return x, y, x[hard], y[hard]
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return x, y, x + 0.5 * x.std() * noise, y


# Kept from each answer (latency_ms: the server's own count, from its handler; the record's
# times are the client's).
KEPT = ("status", "prediction", "steps", "experts", "budget_steps", "budget_experts", "model", "latency_ms", "error")


def clock() -> float:
    """Seconds, to the microsecond. Not the event loop's time: uvloop's `loop.time()` is libuv's
    millisecond clock, read once a turn of the loop, too coarse for latencies of a few ms."""
    return time.perf_counter()


async def sleep_until(deadline: float) -> None:
    """Returns at `deadline` (on `clock()`) or just after, never before: uvloop's timers count
    whole milliseconds, so a sleep may end early by a fraction of one."""
    while (wait := deadline - clock()) > 0:
        await asyncio.sleep(wait)


async def _send(pool: ConnectionPool, request: bytes, start: float, record: dict, timeout_s: float) -> None:
    record["sent"] = clock() - start
    try:
        async with asyncio.timeout(timeout_s):
            record["http"], answer = await pool.send(request)
    except Exception as e:  # counted, never dropped: a failed request is an SLA violation
        answer, record["http"] = {"status": "error", "error": f"{e.__class__.__name__}: {e}"[:200]}, None
    record["done"] = clock() - start
    record.update({k: answer.get(k) for k in KEPT})  # a 4xx names no status: summarize counts an error


@contextlib.contextmanager
def collector_paused():
    """No garbage collection inside (what exists is frozen first, then the collector is off): a
    pause of the generator's own would count as the server's latency (answers the server gave
    in time would be recorded late). A run's garbage is bounded by its requests."""
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


async def run(url: str, times: np.ndarray, bodies: list[dict], timeout_s: float = 30.0) -> list[dict]:
    """Send `bodies` to URL/predict at `times` (seconds from the start), each when its time comes
    whatever is still unanswered; one record per request, in order. Bodies are encoded before the
    clock starts, one loop wakes for each due request instead of one timer per request, and the
    collector is paused while the clock runs."""
    pool = ConnectionPool(url)
    requests = [pool.request_bytes("/predict", json.dumps(b).encode()) for b in bodies]
    records = [{"scheduled": float(t)} for t in times]
    loop = asyncio.get_running_loop()
    start, tasks = clock() + 0.2, []
    try:
        with collector_paused():
            for i in np.argsort(np.asarray(times), kind="stable"):
                await sleep_until(start + records[i]["scheduled"])
                tasks.append(loop.create_task(_send(pool, requests[i], start, records[i], timeout_s)))
            await asyncio.gather(*tasks)
    finally:
        pool.close()
    return records


def _flops_of(record: dict, flops: dict) -> float:
    """FLOPs of one answer: `flops` maps a model ("primary", "fallback"; "primary@k1" for a MoE
    model run at one expert per token) to FLOPs at each step budget."""
    model = record.get("model") or "primary"
    table = flops.get(f"{model}@k{record.get('budget_experts')}", flops[model])
    return table[int(record["steps"]) - 1]


def _expert_budgets(records: list[dict]) -> list[int]:
    """Experts per token the primary (MoE) model answered with; empty without experts."""
    return [r["budget_experts"] for r in records if r.get("model") == "primary" and r.get("budget_experts")]


def summarize(records: list[dict], labels: np.ndarray, sla_ms: float, duration_s: float, flops: dict) -> dict:
    """Tail latency, violations, goodput and (effective) accuracy over one run's records."""
    sent = len(records)
    status = np.array([r.get("status") or "error" for r in records])
    latency = np.array([1e3 * (r["done"] - r["scheduled"]) if "done" in r else np.inf for r in records])
    answered = np.isin(status, ANSWERED)
    correct = answered & (
        np.array([r.get("prediction", -1) if r.get("prediction") is not None else -1 for r in records]) == labels
    )
    on_time = answered & (latency <= sla_ms)
    counts = {s: int((status == s).sum()) for s in (*ANSWERED, "rejected", "deferred", "error")}
    assert sum(counts.values()) == sent, "every request is answered, rejected, deferred or failed"
    lat = latency[answered] if answered.any() else np.array([np.nan])
    spent = sum(_flops_of(r, flops) for r in records if r.get("steps"))
    good = int((correct & on_time).sum())
    return {
        "sent": sent,
        **{f"count_{k}": v for k, v in counts.items()},
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "p999_ms": float(np.percentile(lat, 99.9)),
        "sla_violation_rate": float(1.0 - on_time.sum() / max(sent, 1)),
        "throughput_rps": float(answered.sum() / duration_s),
        "goodput_rps": float(on_time.sum() / duration_s),
        "accuracy": float(correct.sum() / max(answered.sum(), 1)),
        "effective_accuracy": float(good / max(sent, 1)),
        "mean_steps": float(np.mean([r["steps"] for r in records if r.get("steps")] or [0])),
        "mean_expert_budget": float(np.mean(ks)) if (ks := _expert_budgets(records)) else None,
        "flops_per_correct": float(spent / good) if good else float("inf"),
    }


def _bodies(pattern: str, rate: float, duration: float, seed: int, inputs: tuple, priorities: int, budget):
    """(arrival times, request bodies, labels) of one run: the same for every policy at one seed."""
    x, y, hard_x, hard_y = inputs
    times, hard = schedule(pattern, rate, duration, seed)
    rng = np.random.default_rng(seed + 1)
    picks = np.where(hard, rng.integers(0, len(hard_x), len(times)), rng.integers(0, len(x), len(times)))
    labels = [int((hard_y if h else y)[p]) for p, h in zip(picks, hard, strict=True)]
    bodies = []
    for i, (pick, is_hard) in enumerate(zip(picks, hard, strict=True)):
        body = {"x": (hard_x if is_hard else x)[pick].tolist(), "priority": i % priorities}
        if budget is not None:
            body["budget"] = budget
        bodies.append(body)
    return times, bodies, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptive.bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--artifact", required=True, help="the served artifact (its meta.json names the data)")
    parser.add_argument("--pattern", default="poisson", help=f"one or more of {', '.join(PATTERNS)}, comma-separated")
    parser.add_argument("--rate", type=float, required=True, help="mean requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of scheduled arrivals")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pattern, seeds SEED, SEED+1, ...")
    parser.add_argument("--budget", type=float, help="budget sent with each request (default: none)")
    parser.add_argument("--priorities", type=int, default=1, help="requests cycle priorities 0..N-1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", help="the split requests are drawn from (default: test)")
    parser.add_argument("--out", required=True, help="JSON: a list of runs, each its records and labels")
    args = parser.parse_args(argv)
    patterns = [p for p in args.pattern.split(",") if p]
    unknown = [p for p in patterns if p not in PATTERNS]
    if unknown or not patterns or args.repeats < 1:
        parser.error(f"--pattern must name some of {', '.join(PATTERNS)} and --repeats be >= 1")
    inputs = examples(read_meta(args.artifact), args.seed, args.split)
    runs = []
    for repeat in range(args.repeats):  # repeats outermost: a drift of the machine spreads over patterns
        for pattern in patterns:
            seed = args.seed + repeat
            times, bodies, labels = _bodies(
                pattern, args.rate, args.duration, seed, inputs, args.priorities, args.budget
            )
            started = time.time()
            records = uvloop.run(run(args.url, times, bodies))  # the generator's own CPU is the server's loss
            runs.append(
                {"pattern": pattern, "repeat": repeat, "seed": seed, "records": records, "labels": labels,
                 "started": started}
            )  # fmt: skip
    Path(args.out).write_text(json.dumps(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
