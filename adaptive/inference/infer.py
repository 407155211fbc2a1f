"""The one budgeted inference function: parameters merged into the model, the expert budget
compiled in, the step budget a runtime input.

`budgeted_infer(graphdef, experts)` gives `infer(params, x, step_budget) -> Inference`. The
predictor, the exported artifact, the eval step and per-example outcomes all run the model
through it (outcomes through `infer_every_step_budget`, its one-pass equivalent over all step
budgets), so what evaluation scores is what a deployment runs. The expert budget is static: an
executable traced for k experts per token has buffers and work sized for k, so a smaller k
saves time; the step budget is a traced array, so changing it never recompiles.

A policy that halts at random (PonderNet with `pondernet_inference = sample`) draws its coins
from one key per example, derived from a seed and the example's own input (`example_keys`): the
same input gives the same halting step in any batch, at any position, padded or not, so the
eval step, outcomes and the predictor agree, and a rerun is bitwise the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.config_checks import in_range
from adaptive.nn import halting as H
from adaptive.nn.depth import Inference
from adaptive.nn.moe import cap_tokens_at_k, limit_experts
from adaptive.nn.policies import policy_of

# HaltingConfig fields that change only how a trained model halts at inference, never its
# parameters or training: `with_halting` may set them on a restored model.
INFERENCE_FIELDS = ("pondernet_inference", "pondernet_threshold", "pondernet_sample_seed", "exit_threshold")


def budgeted_model(
    graphdef: nnx.GraphDef, params: dict, experts: int | None = None, *, trained_groups: bool = False
) -> nnx.Module:
    """The model as inference runs it: MoE layers capped at `experts` per token (None: its
    trained k) and routing each call's tokens as one group, since a request batch has any size.
    `trained_groups`: with its routing groups as trained (and its k), for the eval step, whose
    batches divide into those groups and whose experts may be sharded over the mesh by group."""
    model = nnx.merge(graphdef, params)
    if trained_groups:
        if experts is not None:
            raise ValueError("an expert budget routes as one group; trained_groups takes experts=None")
        return cap_tokens_at_k(model)
    return limit_experts(model, experts)


def budgeted_infer(
    graphdef: nnx.GraphDef, experts: int | None = None, *, trained_groups: bool = False
) -> Callable[..., Inference]:
    """`infer(params, x, step_budget, key=None) -> Inference` under a per-example (or shared)
    step budget, stopping when every example has halted; see `budgeted_model` for `experts`.
    A policy that samples its halting steps draws them from `example_keys(key, x)`, where `key`
    defaults to the key of the config's `halting.pondernet_sample_seed` (0 before that field).
    The batch is compacted as rows halt (the same outputs), except in the eval step (`trained_groups`)."""

    def infer(params: dict, x: jax.Array, step_budget: jax.Array, key: jax.Array | None = None) -> Inference:
        model = budgeted_model(graphdef, params, experts, trained_groups=trained_groups)
        keys = None
        if model.halting_policy.samples():
            keys = example_keys(sample_key(model.halting) if key is None else key, x)
        # Compaction (adaptive.nn.compaction) costs a compiled loop per bucket: worth it where
        # requests are served, not in training's eval step, compiled afresh by every run.
        return model.infer(x, step_budget, keys, compact=not trained_groups)

    return infer


def sample_key(halting_cfg) -> jax.Array:
    """The base key of sampled halting: from the config's seed for it (0 where it has none)."""
    return jax.random.key(getattr(halting_cfg, "pondernet_sample_seed", 0))


def example_keys(key: jax.Array, x: jax.Array) -> jax.Array:
    """One PRNG key per example (leading axis of `x`), a hash of `key` and the example's bits.

    Each entry is hashed with its position (threefry, via `fold_in`) and the results are XORed,
    so two inputs that differ anywhere get unrelated keys, while equal inputs get equal keys
    whatever batch they are in."""
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    if jnp.issubdtype(flat.dtype, jnp.floating):
        bits = jax.lax.bitcast_convert_type(flat.astype(jnp.float32), jnp.uint32)
    else:
        bits = flat.astype(jnp.int32).view(jnp.uint32)
    positions = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(bits.shape[1], dtype=jnp.uint32))
    hashed = jax.vmap(jax.vmap(lambda k, b: jax.random.key_data(jax.random.fold_in(k, b))), (None, 0))(positions, bits)
    mixed = jax.lax.reduce(hashed, jnp.uint32(0), jax.lax.bitwise_xor, (1,))
    return jax.random.wrap_key_data(mixed, impl=jax.random.key_impl(key))


def with_halting(graphdef: nnx.GraphDef, params: dict, **changes) -> nnx.GraphDef:
    """`graphdef` with inference-time halting settings changed (see INFERENCE_FIELDS), e.g.
    `pondernet_inference="sample"` to evaluate a run trained with the threshold by sampling,
    as Banino et al. evaluate: the parameters and their layout are untouched."""
    model = nnx.merge(graphdef, params)
    allowed = tuple(f for f in INFERENCE_FIELDS if hasattr(model.halting, f))
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise ValueError(f"with_halting changes only {allowed}; got {unknown}")
    rules = {f.name: f.metadata for f in dataclasses.fields(model.halting)}
    for name, value in changes.items():
        rule = rules[name]
        if rule.get("choices") and value not in rule["choices"]:
            raise ValueError(f"halting.{name} cannot be {value!r} (allowed: {rule['choices']})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # the config's own range rule
            in_range(f"halting.{name}", value, rule.get("lo"), rule.get("hi"), rule.get("below"), rule.get("above"))
    halting = dataclasses.replace(model.halting, **changes)
    model.halting, model.halting_policy = halting, policy_of(halting)
    return nnx.split(model, nnx.Param)[0]


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
