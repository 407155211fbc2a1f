"""What the serving side knows of an artifact's operating point (adaptive.evaluation.operating_points).

A point is served through the base model's meta.json, with what differs replaced: its compute
table keeps steps and takes the point's own FLOPs at each step (`flops_at_steps`; pruning shrinks
the repeated block, not the parts run once), MACs scaled step by step alike (an artifact written
before points carried that table scales every step by the ratio at the cap); the cost model's
columns, calibrated on the base model, are dropped (the controller measures service times
online); its accuracy table holds the one number measured, validation accuracy at the full
budget; its memory is its own.
"""

from __future__ import annotations

import copy

from adaptive.inference.artifact_meta import ArtifactError

PRICED = ("steps", "flops", "macs")


def point_meta(meta: dict, point: tuple[str, float], where: str) -> dict:
    """The base meta.json rewritten for `point` = (precision, prune)."""
    entries = {(e["precision"], e["prune"]): e for e in meta.get("operating_points", [])}
    entry = entries.get(tuple(point))
    if entry is None:
        raise ArtifactError(f"{where} has no operating point {point[0]} prune {point[1]:g}")
    out = copy.deepcopy(meta)
    out["compute_at_steps"] = _point_table(meta, entries, entry)
    out["flops_at_expert_budgets"] = {}
    out["expert_variants"], out["batch_variants"] = {}, {}
    cap, k_max = meta["caps"]["steps"], meta["caps"]["experts_per_token"]
    accuracy = meta.get("accuracy_at_budgets") or {}
    rows = [[None] * (cap - 1) + [entry["accuracy"] if k == (k_max or k) else None] for k in range(1, (k_max or 1) + 1)]
    out["accuracy_at_budgets"] = {
        "split": "validation",
        "examples": accuracy.get("examples"),
        "batch": accuracy.get("batch"),
        "experts": list(range(1, k_max + 1)) if k_max else None,
        "accuracy": rows,
    }
    out["memory"] = entry["memory"]
    out["point"] = {"precision": point[0], "prune": point[1]}
    return out


def _point_table(meta: dict, entries: dict, entry: dict) -> dict:
    """The compute table of the point `entry`: the base table's steps, the point's FLOPs per step,
    and each other priced column scaled by the point's FLOPs over the base model's at that step."""
    table = {k: v for k, v in meta["compute_at_steps"].items() if k in PRICED}
    base_flops = table["flops"]
    own = entry.get("flops_at_steps")
    if not (isinstance(own, list) and len(own) == len(base_flops)):
        # the base model's FLOPs at the cap: its own point's entry, or its compute table's last row
        base = entries[("fp32", 0.0)]["flops"] if ("fp32", 0.0) in entries else base_flops[-1]
        own = [value * (entry["flops"] / base if base > 0 else 1.0) for value in base_flops]
    ratios = [mine / theirs if theirs > 0 else 1.0 for mine, theirs in zip(own, base_flops, strict=True)]
    if "macs" in table:
        table["macs"] = [value * r for value, r in zip(table["macs"], ratios, strict=True)]
    table["flops"] = [float(value) for value in own]
    return table


def ladder_points(meta: dict, primary: tuple[str, float] | None = ("fp32", 0.0)) -> list[tuple[str, float]]:
    """The operating points of an artifact that `--fallback-point all` makes fallback rungs: those
    that fit its memory budget, other than `primary` (None: the primary is another artifact)
    and, when both were timed at export, quicker than it; the most accurate first."""
    points = {(p["precision"], p["prune"]): p for p in meta.get("operating_points", [])}
    own = (points.get(primary, {}).get("latency_ms") or {}).get("median") if primary else None
    ranked = sorted(points.values(), key=lambda p: -(p.get("accuracy") or 0.0))
    return [
        (p["precision"], p["prune"])
        for p in ranked
        if p.get("fits", True)
        and (p["precision"], p["prune"]) != primary
        and (own is None or (p.get("latency_ms") or {}).get("median", 0.0) < own)
    ]
