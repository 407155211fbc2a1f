"""The one budgeted inference function: parameters merged into the model, the expert budget
compiled in, the step budget a runtime input.

`budgeted_infer(graphdef, experts)` gives `infer(params, x, step_budget) -> Inference`. The
predictor, the exported artifact, the eval step and per-example outcomes all run the model
through it (outcomes through `infer_every_step_budget`, its one-pass equivalent over all step
budgets), so what evaluation scores is what a deployment runs. The expert budget is static: an
executable traced for k experts per token has buffers and work sized for k, so a smaller k
saves time; the step budget is a traced array, so changing it never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn import halting as H
from adaptive.nn.depth import Inference
from adaptive.nn.moe import limit_experts


def budgeted_model(
    graphdef: nnx.GraphDef, params: dict, experts: int | None = None, *, trained_groups: bool = False
) -> nnx.Module:
    """The model as inference runs it: MoE layers capped at `experts` per token (None: as
    trained) and routing each call's tokens as one group, since a request batch has any size.
    `trained_groups`: the model exactly as trained (its routing groups and k), for the eval step
    during training, whose batches divide into those groups and whose experts may be sharded
    over the mesh by group."""
    model = nnx.merge(graphdef, params)
    if trained_groups:
        if experts is not None:
            raise ValueError("an expert budget routes as one group; trained_groups takes experts=None")
        return model
    return limit_experts(model, experts)


def budgeted_infer(
    graphdef: nnx.GraphDef, experts: int | None = None, *, trained_groups: bool = False
) -> Callable[[dict, jax.Array, jax.Array], Inference]:
    """`infer(params, x, step_budget) -> Inference` under a per-example (or shared) step budget,
    stopping when every example has halted; see `budgeted_model` for `experts`."""

    def infer(params: dict, x: jax.Array, step_budget: jax.Array) -> Inference:
        return budgeted_model(graphdef, params, experts, trained_groups=trained_groups).infer(x, step_budget)

    return infer


def expert_applications(out: Inference) -> jax.Array:
    """Expert applications per example (zeros for a model without experts)."""
    return jnp.zeros_like(out.steps_B) if out.experts_B is None else out.experts_B


def infer_every_step_budget(
    graphdef: nnx.GraphDef, experts: int | None, cap: int
) -> Callable[[dict, jax.Array], tuple[Inference, jax.Array | None]]:
    """`run(params, x) -> (Inference with a leading step-budget axis t = 1..cap, each step's own
    logits [cap, B, C] or None)`: what `budgeted_infer(graphdef, experts)` returns under every
    step budget, from one full trajectory (tests check the two agree) instead of one pass per
    budget. A static model always runs all its steps: every budget gets its one answer."""

    def run(params: dict, x: jax.Array) -> tuple[Inference, jax.Array | None]:
        model = budgeted_model(graphdef, params, experts)
        batch = x.shape[0]
        if model.policy == "none":
            out = model.infer(x, jnp.full((batch,), cap, jnp.int32))
            used = expert_applications(out)
            stack = lambda v: jnp.stack([v] * cap)  # noqa: E731
            return Inference(stack(out.logits_BxC), stack(out.steps_B), stack(used)), None
        traj = model.trajectory(x, train=False)
        logits, steps, used = [], [], []
        for t in range(1, cap + 1):
            out = model.infer_from_trajectory(traj, jnp.full((batch,), t, jnp.int32))
            logits.append(out.logits_BxC)
            steps.append(out.steps_B)
            used.append(_experts_on_steps_run(traj.experts_NxB, out.steps_B, cap))
        return Inference(jnp.stack(logits), jnp.stack(steps), jnp.stack(used)), traj.logits_NxBxC

    return run


def _experts_on_steps_run(experts_NxB: jax.Array | None, steps_B: jax.Array, cap: int) -> jax.Array:
    """Expert applications per example over the steps it ran (zeros without experts)."""
    if experts_NxB is None:
        return jnp.zeros_like(steps_B)
    ran = H.step_numbers(cap, experts_NxB) <= steps_B
    return (experts_NxB * ran).sum(0).astype(jnp.int32)
