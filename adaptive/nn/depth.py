"""A stack of steps with a depth controller: the adaptive-depth model and its static twin.

`DepthModel` = a backbone (adaptive.nn.backbones: encode, step, readout features) + a halting
policy (adaptive.nn.policies: weights, one-step update, loss and compute terms) + the loops,
so static baselines and adaptive models share their parameters' layout and code:

- a static policy (`none`): exactly `depth` steps, unrolled (the fastest static network);
- an adaptive policy: up to `max_steps`, with two execution modes of the same parameters.
  `__call__` (training) runs every step under `lax.scan` and weighs them with the policy
  (gradients cannot pass a `while_loop`); `infer` runs a `lax.while_loop` that stops as soon as
  every element has halted or reached its per-request step budget, so compute not needed is
  not spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn import halting as H
from adaptive.nn.backbones import backbone_of, select, stack
from adaptive.nn.compaction import bucket_sizes, smallest_bucket, while_compacting
from adaptive.nn.moe import MoEFeedForward
from adaptive.nn.outputs import Inference, ModelOutput, Trajectory
from adaptive.nn.policies import policy_of

__all__ = ["DepthModel", "Inference", "ModelOutput", "Trajectory"]


class DepthModel(nnx.Module):
    def __init__(
        self, model_cfg, halting_cfg, input_shape: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs, moe_cfg=None
    ):
        self.backbone, self.halting_policy = backbone_of(model_cfg, moe_cfg), policy_of(halting_cfg)
        self.kind, self.policy, self.halting = model_cfg.kind, halting_cfg.policy, halting_cfg
        self.moe, self.shared, self.sequence = self.backbone.moe, self.backbone.shared, self.backbone.sequence
        self.num_steps = self.halting_policy.num_steps(model_cfg)
        width = model_cfg.hidden
        # Parameters are drawn from `rngs` in this order: backbone, heads, halting unit.
        self.backbone.build(self, model_cfg, moe_cfg, math.prod(input_shape), self.num_steps, rngs)
        self.per_step_heads = self.halting_policy.per_step_heads(self.shared)
        make_head = lambda r: nnx.Linear(width, num_classes, rngs=r)  # noqa: E731
        self.heads = stack(make_head, self.num_steps, rngs) if self.per_step_heads else make_head(rngs)
        if self.halting_policy.halt_unit:
            self.halt_unit = nnx.Linear(width, 1, bias_init=nnx.initializers.constant(halting_cfg.bias_init), rngs=rngs)

    # -- the pieces every execution mode uses ---------------------------------------------------

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(initial state, context seen at every step)."""
        return self.backbone.encode(self, x_BxD)

    def step(self, h, context, t: jax.Array | int, *, train: bool = True, k_active=None):
        """Applies step t (1-based) to state h: (new state, the MoE layer's output or None)."""
        return self.backbone.step(self, h, context, t, train=train, k_active=k_active)

    def readout(self, h, t: jax.Array | int):
        """Logits from a state; sequences are mean-pooled over positions."""
        h = self.backbone.features(self, h)
        return (select(self.heads, t) if self.per_step_heads else self.heads)(h)

    def halt_logit(self, h):
        """The halting unit's logit: per position for a sequence under ACT, else per example."""
        return self.halting_policy.halt_logit(self.halt_unit, h, self.sequence)

    # -- execution modes ------------------------------------------------------------------------

    def trajectory(self, x_BxD: jax.Array, *, train: bool = True, k_active=None) -> Trajectory:
        """Runs all `num_steps` steps under `lax.scan` and keeps what each step produced
        (`train=False`: experts with their evaluation capacity, at most `k_active` a token)."""
        h0, context = self.encode(x_BxD)
        policy = self.halting_policy

        def body(h, t):
            h, moe = self.step(h, context, t, train=train, k_active=k_active)
            halt = self.halt_logit(h) if policy.halt_unit else None
            logits = self.readout(h, t) if policy.step_logits else None
            if moe is None:
                return h, (h, halt, logits, None, None, None, None)
            batch = context.shape[0]
            experts = _experts_per_example(moe, batch).astype(jnp.float32)
            soft = moe.soft_experts_T.reshape(batch, -1).sum(-1)
            return h, (h, halt, logits, moe.aux_loss, moe.metrics, experts, soft)

        _, outs = jax.lax.scan(body, h0, jnp.arange(1, self.num_steps + 1))
        return Trajectory(*outs)

    def __call__(self, x_BxD: jax.Array, limit_B: jax.Array | None = None) -> ModelOutput:
        """The training forward pass (every step up to the cap, weighted by the policy); `limit_B`
        forces each example to halt by its own step cap (a request budget), as inference does."""
        if self.halting_policy.unrolled:
            return self._call_unrolled(x_BxD)
        batch = x_BxD.shape[0]
        traj = self.trajectory(x_BxD)
        cap_B = jnp.full((batch,), self.num_steps, jnp.int32)
        out = self.combine(traj, cap_B if limit_B is None else jnp.clip(limit_B, 1, self.num_steps).astype(jnp.int32))
        if traj.aux_N is None:
            return out
        # Experts count on the steps each example runs at inference (its halting step).
        ran_NxB = H.step_numbers(self.num_steps, traj.experts_NxB) <= jnp.ceil(out.steps_B)
        return out._replace(
            aux_loss=traj.aux_N.mean(),
            metrics=jax.tree.map(lambda m: m.mean(0), traj.moe_metrics),
            experts_B=(traj.experts_NxB * ran_NxB).sum(0),
            expert_ponder_B=(traj.soft_experts_NxB * ran_NxB).sum(0),
        )

    def _call_unrolled(self, x_BxD: jax.Array) -> ModelOutput:
        """Training forward pass of a static network: every step, unrolled."""
        batch = x_BxD.shape[0]
        h, context = self.encode(x_BxD)
        moes = []
        for t in range(1, self.num_steps + 1):
            h, moe = self.step(h, context, t)
            moes.append(moe)
        steps = jnp.full((batch,), float(self.num_steps))
        out = ModelOutput(self.readout(h, self.num_steps), steps, steps)
        if not self.moe:
            return out
        aux, metrics = _mean_over_steps([m.aux_loss for m in moes], [m.metrics for m in moes])
        experts = sum(_experts_per_example(m, batch) for m in moes).astype(jnp.float32)
        soft = sum(m.soft_experts_T.reshape(batch, -1).sum(-1) for m in moes)
        return out._replace(aux_loss=aux, metrics=metrics, experts_B=experts, expert_ponder_B=soft)

    def combine(self, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        """The policy's weights over a trajectory, halting by `limit_B` at the latest."""
        return self.halting_policy.combine(self, traj, limit_B)

    def infer(
        self,
        x_BxD: jax.Array,
        budget_B: jax.Array,
        key: jax.Array | None = None,
        k_active: jax.Array | None = None,
        *,
        compact: bool = True,
    ) -> Inference:
        """Inference under a per-example step budget, stopping when every example has halted.

        The budget is clipped to [1, num_steps] inside the graph too, so no input and no
        parameters can make an example use more than min(budget, cap) steps. A static model
        (halting policy none) has no readout before its last step: it runs all of them whatever
        the budget (`adaptive eval --budget` refuses a smaller one). `k_active` caps
        experts per token at inference (MoE models; at most moe.k, which is compiled in).
        `compact`: shrink the batch to the rows still running as others halt
        (adaptive.nn.compaction; the same steps, the same logits to float32 rounding). The whole
        batch runs instead for MoE models whose routing mixes the rows of a batch (capacity at
        inference, expert choice), and for a symbolic batch size (an exported artifact), whose
        buckets' sizes could not be compared.
        """
        if self.halting_policy.unrolled:
            return self._infer_unrolled(*self.encode(x_BxD), k_active)
        loop = self.infer_loop(x_BxD, budget_B, key, k_active)
        batch = x_BxD.shape[0]
        compactable = compact and isinstance(batch, int) and self.compacts_at_inference()
        sizes = self.compaction_buckets(batch) if compactable else (batch,)
        return loop.finish(while_compacting(loop.body, loop.rows, cap=self.num_steps, active=loop.active, sizes=sizes))

    def infer_loop(
        self, x_BxD: jax.Array, budget_B: jax.Array, key: jax.Array | None = None, k_active: jax.Array | None = None
    ) -> InferLoop:
        """The pieces of `infer`'s halting loop (a halting policy only): the rows' starting state,
        the step `body(t, rows)`, which rows are still `active`, and `finish(rows)`. `infer` runs
        them as one program; `adaptive bench depth` also runs the loop's segments as separate
        calls (host-side re-dispatch) to compare the two."""
        if self.halting_policy.unrolled:
            raise ValueError("a static model has no halting loop: it runs its steps unrolled")
        batch = x_BxD.shape[0]
        limit_B = jnp.clip(jnp.broadcast_to(budget_B, (batch,)).astype(jnp.int32), 1, self.num_steps)
        h0, context = self.encode(x_BxD)
        policy = self.halting_policy
        per_position = policy.per_position(self.sequence)
        key = jax.random.key(0) if key is None else key
        if policy.samples() and not key.shape:
            key = jax.random.split(key, batch)  # what the policy would split: one key per row
        rows = _Rows(
            h0,
            context,
            limit_B[:, None] if per_position else limit_B,
            H.start(h0.shape[:2] if per_position else (batch,)),
            policy.infer_init(h0, batch, self._num_classes()),
            jnp.zeros((batch,), jnp.int32),
            key if key.shape else None,
        )

        def active(rows: _Rows) -> jax.Array:
            return ~(rows.run.halted_H.all(-1) if per_position else rows.run.halted_H)

        def body(t, rows: _Rows) -> _Rows:
            active_B = active(rows)
            h, moe = self.step(rows.h, rows.context, t, train=False, k_active=k_active)
            experts = rows.experts
            if moe is not None:  # count the experts of examples still computing
                experts = experts + jnp.where(active_B, _experts_per_example(moe, h.shape[0]), 0)
            run_key = key if rows.keys is None else rows.keys
            run, acc = policy.infer_step(self, rows.run, t, h, rows.acc, rows.limit, run_key)
            return rows._replace(h=h, run=run, acc=acc, experts=experts)

        def finish(rows: _Rows) -> Inference:
            logits, steps = policy.infer_result(self, rows.run, rows.acc)
            return Inference(logits, steps, rows.experts if self.moe else None)

        return InferLoop(rows, body, active, finish)

    def compacts_at_inference(self) -> bool:
        """Whether `infer` on a concrete batch shrinks to the rows still running: a halting loop
        (not unrolled), and no layer that mixes the rows of a batch at inference (MoE with
        capacity or expert choice does: tokens compete for slots). Export asks this to decide
        which artifacts get per-batch functions."""
        return not self.halting_policy.unrolled and all(
            m.rows_independent_at_inference() for _, m in self.iter_modules() if isinstance(m, MoEFeedForward)
        )

    def compaction_buckets(self, batch: int) -> tuple[int, ...]:
        """The row counts `infer` compacts a concrete batch along (adaptive.nn.compaction), no
        smaller than keeps every row's bits through the reductions a step makes: the blocks',
        the halting unit's (over each position's features, or the example's), a readout's inside
        the loop (a transformer pools and normalises), and the policy's over the logits (an
        exit's confidence)."""
        policy, positions = self.halting_policy, self.backbone.positions(self)
        width = self.heads.kernel.shape[-2]
        reductions = list(self.backbone.row_reductions(self))
        if policy.halt_unit:
            reductions.append(width * positions if policy.per_position(self.sequence) else width)
        if policy.step_logits:
            reductions += self.backbone.readout_reductions(self)
        reductions += policy.step_reductions(self._num_classes())
        return bucket_sizes(batch, smallest=smallest_bucket(batch, tuple(reductions)))

    def _infer_unrolled(self, h, context, k_active) -> Inference:
        """Inference of a static network: every step, unrolled; the budget does not apply."""
        batch = context.shape[0]
        experts = jnp.zeros((batch,), jnp.int32)
        for t in range(1, self.num_steps + 1):
            h, moe = self.step(h, context, t, train=False, k_active=k_active)
            experts = experts + (0 if moe is None else _experts_per_example(moe, batch))
        steps = jnp.full((batch,), self.num_steps, jnp.int32)
        return Inference(self.readout(h, self.num_steps), steps, experts if self.moe else None)

    def infer_from_trajectory(self, traj: Trajectory, limit_B: jax.Array) -> Inference:
        """What `infer` returns under `limit_B`, computed from a full trajectory instead.

        One trajectory serves every budget, which is how evaluation sweeps budgets cheaply, and
        it is the reference the while_loop is tested against. (Sampled PonderNet halting draws
        its own coins, so it has no trajectory equivalent.)
        """
        limit_B = jnp.clip(limit_B, 1, self.num_steps).astype(jnp.int32)
        return self.halting_policy.from_trajectory(self, traj, limit_B)

    def _num_classes(self) -> int:
        return self.heads.kernel.shape[-1]


class _Rows(NamedTuple):
    """What inference's loop carries per row (every leaf has the batch on its leading axis)."""

    h: jax.Array
    context: jax.Array
    limit: jax.Array  # the step budget, per example (or per position)
    run: H.Running
    acc: jax.Array
    experts: jax.Array  # expert applications so far (zeros without experts)
    keys: jax.Array | None  # one PRNG key per example, for a policy that samples


class InferLoop(NamedTuple):
    """`DepthModel.infer_loop`: a halting loop's state and functions (see there)."""

    rows: _Rows
    body: Callable[[jax.Array, _Rows], _Rows]
    active: Callable[[_Rows], jax.Array]
    finish: Callable[[_Rows], Inference]


def _experts_per_example(moe, batch: int) -> jax.Array:
    """Expert applications per example in one step (vector models route one token per example)."""
    return moe.experts_T.reshape(batch, -1).sum(-1)


def _mean_over_steps(aux: list, metrics: list) -> tuple:
    if not aux:
        return 0.0, None
    return sum(aux) / len(aux), jax.tree.map(lambda *m: sum(m) / len(m), *metrics)
