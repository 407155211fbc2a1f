"""The language model's training objective and evaluation sums (model.kind = lm).

Loss: next-token cross-entropy over every position. With exits, CALM's objective: the mean of
every exit's cross-entropy (the last block's included) weighted by its depth l / sum(l), so
deeper exits count more; a learned exit classifier is trained to predict that its exit's top
token agrees with the last block's (its input's gradient is stopped in the model, so this
never changes the language model). Plus the MoE and MoD auxiliary losses the model reports.

Bits per byte count only targets that are bytes (BOS and EOS are not text), in bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adaptive.compute.budget import Budget
from adaptive.compute.lm_flops import LMFlops
from adaptive.data.byte_vocab import BOS
from adaptive.nn.lm import LMOutput
from adaptive.training import lm_budget

LN2 = math.log(2.0)


def lm_loss(
    out: LMOutput, targets_BxL: jax.Array, classifier: bool, budget_terms=None, ponder_cost: float = 0.0
) -> tuple[jax.Array, dict]:
    """(the training objective, its metrics) of one batch; `budget_terms` the budget's penalty
    and its metrics (adaptive.training.lm_budget), or None; `ponder_cost` ACT's tau."""
    ce_BxL = optax.softmax_cross_entropy_with_integer_labels(out.logits_BxLxV.astype(jnp.float32), targets_BxL)
    final = ce_BxL.mean()
    task, extra = final, {}
    if out.exit_logits_ExBxLxV is not None:
        ce_exits = optax.softmax_cross_entropy_with_integer_labels(
            out.exit_logits_ExBxLxV.astype(jnp.float32), targets_BxL[None]
        ).mean(axis=(1, 2))
        per_depth = jnp.concatenate([ce_exits, final[None]])
        depth = jnp.arange(1, per_depth.shape[0] + 1, dtype=jnp.float32)
        task = (per_depth * depth).sum() / depth.sum()
        extra["first_exit_loss"] = ce_exits[0]
        if classifier:
            agrees = out.exit_logits_ExBxLxV.argmax(-1) == out.logits_BxLxV.argmax(-1)[None]
            scores = jnp.clip(out.exit_scores_ExBxL, 1e-6, 1 - 1e-6)
            bce = -jnp.where(jax.lax.stop_gradient(agrees), jnp.log(scores), jnp.log1p(-scores)).mean()
            task = task + bce
            extra["exit_classifier_loss"] = bce
    penalty, budget_metrics = budget_terms if budget_terms is not None else (0.0, {})
    if out.ponder_BxL is not None:  # ACT: Graves' ponder cost, tau * mean(N + R)
        task = task + ponder_cost * out.ponder_BxL.mean()
        extra["ponder_mean"] = out.ponder_BxL.mean()
    byte_BxL = (targets_BxL < BOS).astype(jnp.float32)
    metrics = {
        "loss": task + out.aux_loss + penalty,
        "task_loss": task,
        "bits_per_byte": (ce_BxL * byte_BxL).sum() / jnp.maximum(byte_BxL.sum(), 1.0) / LN2,
        "accuracy": (out.logits_BxLxV.argmax(-1) == targets_BxL).mean(),
        "steps_mean": out.layers_BxL.mean(),  # blocks per token
        **extra,
        **(out.metrics or {}),
        **budget_metrics,
    }
    return task + out.aux_loss + penalty, metrics


def loss_fn_of(cfg, spec, graphdef: nnx.GraphDef, budget: Budget | None = None) -> Callable | None:
    """The language model's `loss_fn` for a sequence task's run, None for a classifier's (whose
    objective `steps` builds from the halting policy)."""
    if not spec.sequence:
        return None
    classifier = cfg.lm.exits and cfg.lm.confidence == "classifier"
    threshold = cfg.lm.exit_threshold if cfg.lm.exits else None
    return make_loss_fn(graphdef, classifier, budget, threshold, cfg.halting.tau if cfg.halting.policy == "act" else 0)


def make_loss_fn(
    graphdef: nnx.GraphDef,
    classifier: bool,
    budget: Budget | None = None,
    exit_threshold: float | None = None,
    ponder_cost: float = 0.0,
) -> Callable:
    """`loss_fn(params, batch, multiplier, key)` as `steps.make_train_step` calls it; with a
    budget, its penalty on the FLOPs per token decoding would spend at `exit_threshold`; with
    ACT, `ponder_cost` * mean(N + R)."""

    def loss_fn(params, batch, multiplier, key):
        model = nnx.merge(graphdef, params)
        out = model(batch["x"], train=True)
        terms = None
        if budget is not None and budget.target is not None:
            terms = lm_budget.budget_terms(out, budget, multiplier, exit_threshold, model.mod_layers)
        return lm_loss(out, batch["y"], classifier, terms, ponder_cost)

    return loss_fn


def make_eval_step(
    graphdef: nnx.GraphDef, max_difficulty: int, exit_threshold: float | None, tokens: LMFlops | None = None
) -> Callable:
    """`eval_step(params, batch, budget) -> sums` over the real rows' tokens, as
    `scoring.score_split` reads them (`budget` is a classifier's step budget: unused). Tokens
    exit at `exit_threshold` (None: every block) and MoD blocks route causally, as decoding would.
    Per-difficulty sums cover the tokens that have a difficulty (addition's answer digits).
    `tokens` given, the FLOPs each token spent are summed too (`flops`)."""

    def eval_step(params: dict, batch: dict, budget: jax.Array) -> dict:
        out = nnx.merge(graphdef, params)(batch["x"], train=False, exit_threshold=exit_threshold)
        y = batch["y"]
        real = jnp.broadcast_to(batch["mask"][:, None], y.shape)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits_BxLxV.astype(jnp.float32), y)
        correct = (out.logits_BxLxV.argmax(-1) == y) * real
        byte = (y < BOS) * real
        graded = (batch["difficulty"] >= 0) * real
        bucket = jnp.clip(batch["difficulty"], 0, max_difficulty)
        by_difficulty = lambda v: jnp.zeros(max_difficulty + 1).at[bucket].add(v * graded)  # noqa: E731
        experts = jnp.zeros(()) if out.experts_BxL is None else (out.experts_BxL * real).sum()
        spent = {}
        if tokens is not None:
            spent["flops"] = (tokens.of_tokens(out.reached_NxBxL, out.ran_NxBxL, out.experts_NxBxL) * real).sum()
        return {
            **spent,
            "loss": (ce * real).sum(),
            "correct": correct.sum(),
            "count": real.sum(),
            "steps": (out.layers_BxL * real).sum(),
            "experts": experts,
            "max_steps": jnp.max(jnp.where(real > 0, out.layers_BxL, 0)),
            "byte_loss": (ce * byte).sum(),
            "bytes": byte.sum(),
            "count_by_difficulty": by_difficulty(jnp.ones_like(ce)),
            "correct_by_difficulty": by_difficulty(correct),
            "steps_by_difficulty": by_difficulty(out.layers_BxL),
        }

    return eval_step
