"""Accuracy and compute over a whole split, through the inference path (what a deployment does)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adaptive import config as config_lib
from adaptive import data


def evaluate(eval_step, params: dict, cfg: config_lib.Config, split: str, budget: int | None = None) -> dict:
    """Accuracy, loss and compute steps over every example of `split`.

    `eval_step` comes from `steps.make_eval_step`; `budget` is the per-example step budget
    (default: the cap). Parity also gets accuracy and mean steps per difficulty: lists indexed
    by difficulty, None where the split has no example of that difficulty.
    """
    budget = jnp.int32(budget or config_lib.step_cap(cfg))
    totals = None
    for batch in data.eval_batches(cfg.data, split, cfg.train.eval_batch_size):
        sums = eval_step(params, batch, budget)
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


def _merge_sums(totals: dict, sums: dict) -> dict:
    return {k: jnp.maximum(v, sums[k]) if k == "max_steps" else v + sums[k] for k, v in totals.items()}
