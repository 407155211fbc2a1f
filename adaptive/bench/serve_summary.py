"""One row per (policy, pattern) of `adaptive bench serve` from its repeated runs.

Each pattern runs `repeats` times (other seeds, the same for every policy). The headline numbers,
effective accuracy and SLA violation rate, are the mean over the runs with a 95% interval:
Student's t over the runs' values (`adaptive.evaluation.intervals.mean_interval`, a run standing
for a seed there), cut to [0, 1]; with 3 runs it is wide, which is the point of reporting it; with
one run there is none (None). Latency percentiles, counts and the rejected fraction pool the
runs' requests.

How rejections count: a rejected (or deferred, or failed) request is sent and not answered, so
it counts as wrong in effective accuracy (correct and on-time answers / requests sent) and as a
violation in the SLA violation rate (1 - on-time answers / requests sent).
"""

from __future__ import annotations

import numpy as np

from adaptive.bench.loadgen import summarize
from adaptive.evaluation.intervals import mean_interval

HEADLINE = ("effective_accuracy", "sla_violation_rate")


def pattern_row(runs: list[dict], sla_ms: float, duration_s: float, flops: dict) -> dict:
    """The row of one (policy, pattern) from its runs (each {"records", "labels"} of loadgen)."""
    per_run = [summarize(r["records"], np.asarray(r["labels"]), sla_ms, duration_s, flops) for r in runs]
    records = [rec for r in runs for rec in r["records"]]
    labels = np.concatenate([np.asarray(r["labels"]) for r in runs])
    pooled = summarize(records, labels, sla_ms, duration_s * len(runs), flops)
    row = {"repeats": len(runs)}
    for key in HEADLINE:
        values = [m[key] for m in per_run]
        interval = mean_interval(values)
        row[key] = interval.mean
        row[f"{key}_lo"] = None if interval.low is None else max(interval.low, 0.0)  # fractions: in [0, 1]
        row[f"{key}_hi"] = None if interval.high is None else min(interval.high, 1.0)
        row[f"{key}_runs"] = values
    row["rejected_fraction"] = pooled["count_rejected"] / max(pooled["sent"], 1)
    kept = ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "goodput_rps", "accuracy", "mean_steps", "mean_expert_budget")
    return {**row, **{k: pooled[k] for k in kept}, "flops_per_correct": pooled["flops_per_correct"],
            "sent": pooled["sent"], **{k: v for k, v in pooled.items() if k.startswith("count_")}}  # fmt: skip
