"""Accuracy and compute over a whole split, through the inference path (what a deployment does)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adaptive import config as config_lib
from adaptive import data


def evaluate(
    eval_step, params: dict, cfg: config_lib.Config, split: str, budget: int | None = None, requests=None
) -> dict:
    """Accuracy, loss and compute steps over every example of `split`.

    `eval_step` comes from `steps.make_eval_step`; `budget` is the per-example step budget
    (default: the cap), or with `requests` (a Budget with a request distribution) each example
    gets a step cap drawn from it, the same draws on every call. Parity also gets accuracy and
    mean steps per difficulty: lists indexed by difficulty, None where the split has no example
    of that difficulty.
    """
    budget = jnp.int32(budget or config_lib.step_cap(cfg))
    totals = None
    for i, batch in enumerate(data.eval_batches(cfg.data, split, cfg.train.eval_batch_size)):
        limits = request_steps(requests, i, batch["y"].shape[0])
        sums = eval_step(params, batch, budget if limits is None else limits)
        totals = sums if totals is None else _merge_sums(totals, sums)
    totals = jax.device_get(totals)
    n = max(float(totals["count"]), 1.0)
    metrics = {
        "eval/loss": float(totals["loss"]) / n,
        "eval/accuracy": float(totals["correct"]) / n,
        "eval/steps_mean": float(totals["steps"]) / n,
        "eval/steps_max": int(totals["max_steps"]),
        "eval/experts_mean": float(totals["experts"]) / n,  # expert applications per example (0: no MoE)
        "eval/examples": int(totals["count"]),
    }
    if cfg.data.name == "parity":
        counts = totals["count_by_difficulty"]
        for key, name in (("correct_by_difficulty", "accuracy"), ("steps_by_difficulty", "steps")):
            means = totals[key] / np.maximum(counts, 1)
            per = [float(m) if c else None for m, c in zip(means, counts, strict=True)]
            metrics[f"eval/{name}_by_difficulty"] = per
    return metrics


def request_steps(requests, index: int, size: int) -> jax.Array | None:
    """Step caps for batch `index` drawn from a budget's request distribution (None without one)."""
    if requests is None or not requests.request_steps:
        return None
    return requests.sample_steps(jax.random.fold_in(jax.random.key(EVAL_DRAWS_SEED), index), size)


EVAL_DRAWS_SEED = 20261129  # fixed: every evaluation of every run draws the same request budgets


def _merge_sums(totals: dict, sums: dict) -> dict:
    return {k: jnp.maximum(v, sums[k]) if k == "max_steps" else v + sums[k] for k, v in totals.items()}
