"""The pure, jitted functions of training: `train_step(state, batch) -> state` and eval sums.

The train state is a plain dict pytree (params as a pure dict, optax state, counters and
running metric sums), so orbax saves it as is and a restored run continues bitwise the same.
Randomness is `fold_in(seed key, step)`: nothing random is carried in the state (it draws the
per-example step caps of a budget's request distribution).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from adaptive.inference.infer import budgeted_infer, expert_applications
from adaptive.training import losses


def init_state(
    graphdef: nnx.GraphDef,
    params: dict,
    tx: optax.GradientTransformation,
    halting_cfg,
    input_shape: tuple[int, ...],
    budget=None,
    batch_size: int = 2,
    loss_fn: Callable | None = None,
    sequence: bool | None = None,
) -> dict:
    """A fresh train state. The running metric sums take the shapes the loss reports (found by
    tracing it once, abstractly, on a batch of `batch_size`: the train batch's, so that experts'
    routing groups divide it as they will in training), so a model with experts gets its moe/
    metrics too. `loss_fn` (see `make_train_step`) given, the batch is a sequence task's:
    tokens in, next tokens out (`sequence` says so when a classifier's loss is given too)."""
    rows = batch_size
    if sequence is None:
        sequence = loss_fn is not None
    loss_fn = loss_fn or classifier_loss_fn(graphdef, halting_cfg, budget)
    if not sequence:
        batch = {
            "x": jax.ShapeDtypeStruct((rows, *input_shape), jnp.float32),
            "y": jax.ShapeDtypeStruct((rows,), jnp.int32),
        }
    else:
        tokens = jax.ShapeDtypeStruct((rows, *input_shape), jnp.int32)
        batch = {"x": tokens, "y": tokens}
    _, metrics = jax.eval_shape(loss_fn, params, batch, 0.0, jax.random.key(0))
    zeros = {k: jnp.zeros(v.shape, jnp.float32) for k, v in {**metrics, "grad_norm": metrics["loss"]}.items()}
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "skipped_steps": jnp.zeros((), jnp.int32),  # non-finite steps over the whole run
        "nonfinite_streak": jnp.zeros((), jnp.int32),
        "worst_streak": jnp.zeros((), jnp.int32),  # longest streak so far: checked on the host
        "metric_sums": zeros,
        "metric_count": jnp.zeros((), jnp.int32),
        "multiplier": jnp.zeros((), jnp.float32),  # the budget's Lagrange multiplier (0 without one)
    }


def reset_metric_sums(state: dict) -> dict:
    # zeros_like keeps each array's sharding: on a mesh, a fresh jnp.zeros would be a host-local
    # array that multi-host checkpoints cannot save.
    zeros = jax.tree.map(jnp.zeros_like, state["metric_sums"])
    return {**state, "metric_sums": zeros, "metric_count": jnp.zeros_like(state["metric_count"])}


def classifier_loss_fn(graphdef: nnx.GraphDef, halting_cfg, budget=None) -> Callable:
    def loss_fn(params, batch, multiplier, key):
        # Under a distribution of request budgets each example halts at a cap drawn from it.
        limit_B = None if budget is None else budget.sample_steps(key, batch["x"].shape[0])
        out = nnx.merge(graphdef, params)(batch["x"], limit_B)
        return losses.total_loss(out, batch["y"], halting_cfg.policy, halting_cfg, budget, multiplier)

    return loss_fn


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    halting_cfg,
    budget=None,
    seed: int = 0,
    loss_fn: Callable | None = None,
) -> Callable:
    """Builds `train_step(state, batch) -> state` (jit it with the state donated).

    A step whose loss, gradients or new parameters are not finite leaves params and optimizer
    state as they were and is counted in `skipped_steps`; the host stops the run on a long streak.
    `loss_fn(params, batch, multiplier, key) -> (loss, metrics)` replaces the classifiers'
    objective (the language model's: adaptive.training.lm_steps).
    """

    loss_fn = loss_fn or classifier_loss_fn(graphdef, halting_cfg, budget)

    def train_step(state: dict, batch: dict) -> dict:
        multiplier = state["multiplier"]
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, multiplier, key)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # The new parameters are checked too: finite gradients can still make non-finite ones (an
        # update that overflows), and a checkpoint must never hold them.
        finite_params = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda p: jnp.isfinite(p).all(), params))
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & finite_params
        # Select, not lax.cond: a cond around the update slows the whole step (XLA copies buffers).
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        params, opt_state = keep(params, state["params"]), keep(opt_state, state["opt_state"])
        streak = jnp.where(ok, 0, state["nonfinite_streak"] + 1)
        step_metrics = {"grad_norm": grad_norm, **aux}
        sums = {k: v + jnp.where(ok, step_metrics[k], 0.0) for k, v in state["metric_sums"].items()}
        return {
            "step": state["step"] + 1,
            "params": params,
            "opt_state": opt_state,
            "skipped_steps": state["skipped_steps"] + (~ok).astype(jnp.int32),
            "nonfinite_streak": streak,
            "worst_streak": jnp.maximum(state["worst_streak"], streak),
            "metric_sums": sums,
            "metric_count": state["metric_count"] + ok.astype(jnp.int32),
            "multiplier": multiplier
            if budget is None or budget.target is None
            else jnp.where(ok, budget.dual_step(multiplier, aux["budget/realized_compute"]), multiplier),
        }

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, max_difficulty: int) -> Callable:
    """Builds `eval_step(params, batch, budget) -> sums` over the real (mask = 1) examples.

    Evaluation runs the one budgeted inference function (the while_loop that stops when all
    have halted) under a step budget, so what it reports is what a deployed model does; its
    experts route in the groups they trained with, which its batches divide into and a mesh may
    shard. Sums are also kept per difficulty (index = difficulty, 0..max_difficulty) for tasks
    that have one.
    """
    infer = budgeted_infer(graphdef, trained_groups=True)

    def eval_step(params: dict, batch: dict, budget: jax.Array) -> dict:
        out = infer(params, batch["x"], budget)
        experts = expert_applications(out)
        mask = batch["mask"]
        count = mask.sum()
        loss, _ = losses.classification(out.logits_BxC, batch["y"], mask)
        correct = (jnp.argmax(out.logits_BxC, -1) == batch["y"]) * mask
        steps = out.steps_B * mask
        bucket = jnp.clip(batch["difficulty"], 0, max_difficulty)
        by_difficulty = lambda v: jnp.zeros(max_difficulty + 1).at[bucket].add(v)  # noqa: E731
        return {
            "loss": loss * count,
            "correct": correct.sum(),
            "count": count,
            "steps": steps.sum(),
            "experts": (experts * mask).sum(),
            "max_steps": jnp.max(jnp.where(mask > 0, out.steps_B, 0)),
            "count_by_difficulty": by_difficulty(mask),
            "correct_by_difficulty": by_difficulty(correct),
            "steps_by_difficulty": by_difficulty(steps),
        }

    return eval_step
