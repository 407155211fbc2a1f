"""Budgeted batch classification (MSDNet, Huang et al. 2018): exit thresholds for a mean compute.

For a target mean number of steps, plan the share of examples that leaves at each exit as a
geometric distribution, q_t proportional to r^(t-1), with r solved so that sum_t t * q_t equals
the target. Then, on a validation split, set each exit's confidence threshold so that exactly
the planned share of all examples leaves there: walking the exits in order, the most confident
of the examples still running exit first. The last exit takes whatever is left. Thresholds are a
choice, so they are fitted on the validation split only (eval_report.CALIBRATION_SPLIT); applied
to the test split at the end, they spend about the target (the gap is how far validation and
test confidences differ), which is the honest test of the calibration.
"""

from __future__ import annotations

import numpy as np


def geometric_exit_fractions(num_exits: int, target_mean_exit: float) -> np.ndarray:
    """q_1..q_N, q_t proportional to r^(t-1), summing to 1, with mean exit `target_mean_exit`."""
    if not 1.0 <= target_mean_exit <= num_exits:
        raise ValueError(f"target mean exit {target_mean_exit:g} must be in [1, {num_exits}]")
    exits = np.arange(1, num_exits + 1)

    def plan(log_r: float) -> np.ndarray:
        weights = np.exp((exits - 1) * log_r - np.max((exits - 1) * log_r))  # stable for any r
        return weights / weights.sum()

    low, high = -50.0, 50.0  # r from e^-50 (all at the first exit) to e^50 (all at the last)
    for _ in range(200):  # the mean exit grows monotonically with r: bisect on log r
        mid = 0.5 * (low + high)
        if (plan(mid) * exits).sum() < target_mean_exit:
            low = mid
        else:
            high = mid
    return plan(0.5 * (low + high))


def calibrate(confidence_NxB: np.ndarray, fractions_N: np.ndarray) -> np.ndarray:
    """Per-exit thresholds such that fraction q_t of all B examples exits at t (last: -inf)."""
    num_exits, count = confidence_NxB.shape
    running = np.ones(count, bool)
    thresholds = np.full(num_exits, -np.inf)
    planned = np.round(np.cumsum(fractions_N) * count).astype(int)  # exits so far, cumulative
    exited = 0
    for t in range(num_exits - 1):
        leave = planned[t] - exited
        candidates = np.flatnonzero(running)
        if leave <= 0 or candidates.size == 0:
            thresholds[t] = np.inf  # nobody leaves here
            continue
        order = candidates[np.argsort(-confidence_NxB[t, candidates], kind="stable")]
        leave = min(leave, order.size)
        thresholds[t] = confidence_NxB[t, order[leave - 1]]
        out = running & (confidence_NxB[t] >= thresholds[t])  # ties at the threshold leave too
        exited += int(out.sum())
        running &= ~out
    return thresholds


def exit_steps(confidence_NxB: np.ndarray, thresholds_N: np.ndarray) -> np.ndarray:
    """The exit (1-based) each example takes: the first whose confidence reaches its threshold."""
    passes = confidence_NxB >= thresholds_N[:, None]
    passes[-1] = True
    return np.argmax(passes, axis=0) + 1
