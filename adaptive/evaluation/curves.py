"""Compute-aware evaluation from per-example outcomes: budget curves, Pareto fronts, exit
thresholds, anytime accuracy, difficulty buckets and compute distributions (pure numpy).

`compute(steps, experts)` turns mean steps (and expert applications) into the budget's unit:
every row carries `steps`, `flops` and `compute` in that unit, so plots and tables can use
whichever the user's budget is stated in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from adaptive.evaluation import thresholds as T
from adaptive.inference.outcomes import Outcomes

Compute = Callable[[float, float | None], dict]  # (mean steps, mean experts) -> {"flops", "compute"}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both less compute and more accuracy, by compute."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def on_front(points: list[tuple[float, float]]) -> list[bool]:
    """For each point, in order, whether it is on the Pareto front (`pareto_front`): of points
    that coincide there, only the first, so that settings giving one result are one point of
    the front, not each marked as though they were several."""
    front, marked = set(pareto_front(points)), []
    for point in points:
        marked.append(point in front)
        front.discard(point)
    return marked


def _row(correct_B: np.ndarray, steps_B: np.ndarray, experts_B: np.ndarray, compute: Compute, **keys) -> dict:
    steps, experts = float(steps_B.mean()), float(experts_B.mean())
    return {
        **keys,
        "accuracy": float(correct_B.mean()),
        "steps": steps,
        "experts": experts,
        **compute(steps, experts if experts > 0 else None),
    }


def budget_grid(out: Outcomes, compute: Compute) -> list[dict]:
    """Accuracy and mean compute at every (expert budget, step budget), with `pareto` marking
    the operating points on the front of accuracy vs compute. With expert budgets, `compute`
    takes the row's as `expert_budget=k` (a capacity-dispatch model's buffers shrink with k:
    its compute is not the applications' count alone)."""
    rows = []
    num_k, cap = out.correct_KxTxB.shape[:2]
    for k in range(num_k):
        at_k = functools.partial(compute, expert_budget=k + 1) if num_k > 1 else compute
        for t in range(cap):
            rows.append(
                _row(
                    out.correct_KxTxB[k, t],
                    out.steps_KxTxB[k, t],
                    out.experts_KxTxB[k, t],
                    at_k,
                    step_budget=t + 1,
                    expert_budget=(k + 1) if num_k > 1 else None,
                )
            )
    for r, front in zip(rows, on_front([(r["compute"], r["accuracy"]) for r in rows]), strict=True):
        r["pareto"] = front
    return rows


def anytime(out: Outcomes) -> list[float] | None:
    """Accuracy if every example were stopped after step t (models with a prediction per step)."""
    if out.step_correct_NxB is None:
        return None
    return [float(v) for v in out.step_correct_NxB.mean(axis=1)]


def threshold_curve(out: Outcomes, compute: Compute, points: int = 15) -> list[dict] | None:
    """Early exit at one confidence threshold for every step, swept over the confidences' quantiles."""
    if out.step_confidence_NxB is None:
        return None
    conf = out.step_confidence_NxB
    rows = []
    for threshold in np.unique(np.quantile(conf, np.linspace(0.0, 1.0, points))):
        steps = T.exit_steps(conf, np.full(conf.shape[0], threshold))
        correct = out.step_correct_NxB[steps - 1, np.arange(out.size)]
        rows.append(_row(correct, steps, np.zeros(out.size), compute, threshold=float(threshold)))
    return rows


def budgeted_batch(validation: Outcomes, test: Outcomes, target_steps: list[float], compute: Compute) -> list[dict]:
    """MSDNet budgeted batch classification: thresholds calibrated on `validation` for each target
    mean number of steps, then applied to `test`."""
    if validation.step_confidence_NxB is None:
        return []
    num_exits = validation.step_confidence_NxB.shape[0]
    rows = []
    for target in target_steps:
        planned = T.geometric_exit_fractions(num_exits, target)
        thresholds = T.calibrate(validation.step_confidence_NxB, planned)
        val_steps = T.exit_steps(validation.step_confidence_NxB, thresholds)
        steps = T.exit_steps(test.step_confidence_NxB, thresholds)
        correct = test.step_correct_NxB[steps - 1, np.arange(test.size)]
        rows.append(
            {
                **_row(correct, steps, np.zeros(test.size), compute),
                "target_steps": float(target),
                "target_compute": compute(float(target), None)["compute"],
                "planned_exit_fractions": planned.round(4).tolist(),
                "validation_exit_fractions": _fractions(val_steps, num_exits),
                "test_exit_fractions": _fractions(steps, num_exits),
                "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds],
            }
        )
    return rows


def _fractions(steps_B: np.ndarray, num_exits: int) -> list[float]:
    return (np.bincount(steps_B - 1, minlength=num_exits) / max(len(steps_B), 1)).round(4).tolist()


def distribution(values_B: np.ndarray) -> dict:
    """Mean, median, p99 and max of a per-example quantity."""
    return {
        "mean": float(values_B.mean()),
        "p50": float(np.percentile(values_B, 50)),
        "p99": float(np.percentile(values_B, 99)),
        "max": float(values_B.max()),
    }


def by_difficulty(correct_B: np.ndarray, steps_B: np.ndarray, difficulty_B: np.ndarray) -> list[dict]:
    """Accuracy and mean steps per difficulty bucket (tasks whose examples carry a difficulty)."""
    rows = []
    for d in np.unique(difficulty_B):
        sel = difficulty_B == d
        rows.append(
            {
                "difficulty": int(d),
                "examples": int(sel.sum()),
                "accuracy": float(correct_B[sel].mean()),
                "steps": float(steps_B[sel].mean()),
            }
        )
    return rows
