"""Scoring a split: its batches, and accuracy and compute at one operating point.

Two scorers read a split, both through `split_batches` and both running the model through the
one budgeted inference function (adaptive/inference/infer.py):
- `score_split` (here): one operating point -- a step budget, or per-example caps drawn from a
  budget's request distribution -- through the eval step's on-device sums, loss included; what
  training's periodic evaluation and `adaptive eval --budget` report.
- `outcomes.collect`: per-example outcomes under every (expert budget, step budget) at once, for
  curves, thresholds and an artifact's accuracy table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from adaptive import config as config_lib
from adaptive import data


def split_batches(
    cfg: config_lib.Config, split: str, batch_size: int, limit: int | None = None, *, spread: bool = False
) -> Iterator:
    """(batch, real_B) over every example of `split` in order, in batches of exactly `batch_size`
    (the last one padded, see `data.eval_batches`); `real_B` marks the rows that count: not
    padding, and among the first `limit` real examples when given. `spread`: the `limit`
    examples come from every k-th batch across the whole split instead of its start (a
    language model's windows are in file order: the first ones are a few files)."""
    stride = 1
    if limit is not None and spread:
        batches = -(-len(data.load_split(cfg.data, split)) // batch_size)
        stride = max(1, batches // max(1, -(-limit // batch_size)))
    seen = 0
    for i, batch in enumerate(data.eval_batches(cfg.data, split, batch_size)):
        if limit is not None and seen >= limit:
            return
        if i % stride:
            continue
        real = batch["mask"] > 0
        if limit is not None:
            real &= seen + np.arange(len(real)) < limit
        seen += int(real.sum())
        yield batch, real


def score_split(
    eval_step, params: dict, cfg: config_lib.Config, split: str, budget: int | None = None, requests=None
) -> dict:
    """Accuracy, loss and compute steps over every example of `split`.

    `eval_step` comes from `steps.make_eval_step`; `budget` is the per-example step budget
    (default: the cap), or with `requests` (a Budget with a request distribution) each example
    gets a step cap drawn from it, the same draws on every call. Parity and addition also get
    accuracy and mean steps per difficulty: lists indexed by difficulty, None where the split has
    no example of that difficulty. For a language model every figure is per token (loss in nats,
    next-token accuracy, blocks per token; `eval/examples` counts tokens), plus bits per byte.
    """
    budget = jnp.int32(budget or config_lib.step_cap(cfg))
    totals = None
    for i, (batch, _) in enumerate(split_batches(cfg, split, cfg.train.eval_batch_size)):
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
    if "bytes" in totals:  # a language model: its loss in bits per byte of text
        metrics["eval/bits_per_byte"] = float(totals["byte_loss"]) / max(float(totals["bytes"]), 1.0) / math.log(2.0)
    if "flops" in totals:  # a language model: the FLOPs each token spent, as decoding prices them
        metrics["eval/flops_per_token"] = float(totals["flops"]) / n
    if cfg.data.name in ("parity", "addition"):
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
    return requests.sample_steps(draws_key(index), size)


def draws_key(index: int) -> jax.Array:
    """The key batch `index` of every evaluation draws its requests with."""
    return jax.random.fold_in(jax.random.key(EVAL_DRAWS_SEED), index)


EVAL_DRAWS_SEED = 20261129  # fixed: every evaluation of every run draws the same request budgets


def _merge_sums(totals: dict, sums: dict) -> dict:
    return {k: jnp.maximum(v, sums[k]) if k == "max_steps" else v + sums[k] for k, v in totals.items()}
