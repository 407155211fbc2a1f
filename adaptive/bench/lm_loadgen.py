"""An open-loop streaming client for `adaptive serve` of a language model.

Arrivals are scheduled in advance (adaptive.bench.loadgen.schedule: poisson, gamma, spike), so a
slow server cannot slow the offered load, and every time is measured from a request's
*scheduled* arrival. Each request streams (server-sent events): time to first token (TTFT) is
when its first token arrives, time per output token (TPOT) the mean gap between its tokens
after the first. Prompts are the first bytes of windows of the validation split, each with a
length and a number of new tokens drawn at random (the same for every policy at one seed).

`summarize` pools one run's records: TTFT and TPOT p50/p99/p99.9, the share of requests that
violate the SLA (rejected, deferred, failed, or answered with TTFT or TPOT over it), goodput
(tokens per second of requests within both SLAs), agreement with the full model's greedy tokens
(position by position: the sequence-level agreement experiments/calm_guarantee scores), the
agreement-weighted goodput, and FLOPs per token.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np

from adaptive.bench.loadgen import clock, collector_paused, schedule, sleep_until

ANSWERED = ("ok", "degraded", "fallback")


def requests_of(prompts: list[np.ndarray], pattern: str, rate: float, duration_s: float, seed: int, *, new_tokens: int):
    """(arrival times, [(prompt index, prompt bytes, max_new_tokens, priority)]) of one run."""
    times, _ = schedule(pattern, rate, duration_s, seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(len(times)):
        pick = int(rng.integers(0, len(prompts)))
        length = int(rng.integers(8, len(prompts[pick]) + 1))
        tokens = int(np.clip(rng.geometric(1.0 / (new_tokens / 2)), 4, new_tokens))  # many short, some long
        out.append((pick, prompts[pick][:length], tokens, i % 2))
    return times, out


async def _one(session, url: str, body: dict, start: float, record: dict, timeout_s: float) -> None:
    record["sent"] = clock() - start
    arrivals, summary = [], {}
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url + "/generate", json=body) as response:
                if response.content_type != "text/event-stream":
                    summary = await response.json(content_type=None)
                else:
                    async for line in response.content:
                        if not line.startswith(b"data: "):
                            continue
                        event = json.loads(line[6:])
                        if event.get("done"):
                            summary = event
                        else:
                            arrivals.append((clock() - start, event["token"], event["layers"]))
    except Exception as e:  # counted, never dropped: a failed request violates the SLA
        summary = {"status": "error", "error": f"{e.__class__.__name__}: {e}"[:200]}
    record["done"] = clock() - start
    record["status"] = summary.get("status") or "error"
    record["model"] = summary.get("model")
    record["times"] = [t for t, _, _ in arrivals]
    record["tokens"] = [int(tok) for _, tok, _ in arrivals]
    record["layers"] = [float(layers) for _, _, layers in arrivals]
    record["flops"] = float(summary.get("flops") or 0.0) + float(summary.get("prefill_flops") or 0.0)
    record["decode_flops"] = float(summary.get("flops") or 0.0)  # the tokens after the first
    record["degraded_tokens"] = summary.get("degraded_tokens", 0)
    if "error" in summary:
        record["error"] = summary["error"]


async def run(url: str, times, bodies: list[dict], timeout_s: float = 120.0) -> list[dict]:
    """Send `bodies` (streamed) at `times` seconds from the start; one record per request."""
    records = [{"scheduled": float(t)} for t in times]
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start, tasks = clock() + 0.2, []
        with collector_paused():
            for i in np.argsort(np.asarray(times), kind="stable"):
                await sleep_until(start + records[i]["scheduled"])
                tasks.append(loop.create_task(_one(session, url, bodies[i], start, records[i], timeout_s)))
            await asyncio.gather(*tasks)
    return records


def summarize(records: list[dict], reference: list[list[int]], *, ttft_ms: float, tpot_ms: float, duration_s: float):
    """One run's figures; `reference[i]`: the full model's greedy tokens for request i."""
    status = np.array([r["status"] for r in records])
    answered = np.isin(status, ANSWERED)
    ttft = np.array([1e3 * (r["times"][0] - r["scheduled"]) if r["times"] else np.inf for r in records])
    # a one-token answer has no time per output token: out of the TPOT percentiles, within its SLA
    tpot = np.array(
        [
            1e3 * (r["times"][-1] - r["times"][0]) / (len(r["times"]) - 1) if len(r["times"]) > 1 else np.nan
            for r in records
        ]
    )
    within = answered & (ttft <= ttft_ms) & ~(tpot > tpot_ms)
    timed = answered & np.isfinite(tpot)
    agreement = np.array([_agreement(r["tokens"], ref) for r, ref in zip(records, reference, strict=True)])
    tokens = np.array([len(r["tokens"]) for r in records])
    good_tokens = float(tokens[within].sum())
    spent = sum(r["flops"] for r in records)
    decoded = sum(r.get("decode_flops", 0.0) for r in records)

    def pct(values, q):
        return float(np.percentile(values, q)) if len(values) else float("nan")

    return {
        "sent": len(records),
        **{f"count_{s}": int((status == s).sum()) for s in (*ANSWERED, "rejected", "deferred", "error")},
        "ttft_p50_ms": pct(ttft[answered], 50),
        "ttft_p99_ms": pct(ttft[answered], 99),
        "ttft_p999_ms": pct(ttft[answered], 99.9),
        "tpot_p50_ms": pct(tpot[timed], 50),
        "tpot_p99_ms": pct(tpot[timed], 99),
        "tpot_p999_ms": pct(tpot[timed], 99.9),
        "violation_rate": float(1.0 - within.sum() / max(len(records), 1)),
        "goodput_tokens_per_s": good_tokens / duration_s,
        "agreement": float(agreement[answered].mean()) if answered.any() else float("nan"),
        "agreement_weighted_goodput": float((tokens * agreement)[within].sum()) / duration_s,
        # All the compute, prefills included, per token generated; and the decode steps' alone
        # per token after each request's first, as eval, /metrics and generate's decode_flops count.
        "flops_per_token": float(spent / max(tokens.sum(), 1)),
        "decode_flops_per_token": float(decoded / max(int(np.maximum(tokens - 1, 0).sum()), 1)),
        "mean_layers": float(np.mean([x for r in records for x in r["layers"][1:]] or [np.nan])),
    }


def _agreement(tokens: list[int], reference: list[int]) -> float:
    """Share of the reference's positions (as many as were asked for) where the tokens match."""
    if not reference:
        return float("nan")
    n = len(reference)
    got = np.full(n, -1)
    got[: min(n, len(tokens))] = tokens[:n]
    return float((got == np.asarray(reference)).mean())
