"""A stack of steps with a depth controller: the adaptive-depth model and its static twin.

One class serves every depth setting so that static baselines and adaptive models share their
parameters' layout and code:

- `policy = none`: exactly `depth` steps, unrolled (the fastest static network of that depth);
- `act`, `pondernet`, `early_exit`: up to `max_steps`, with two execution modes of the same
  parameters. `__call__` (training) runs every step under `lax.scan` and weighs them with the
  policy (gradients cannot pass a `while_loop`); `infer` runs a `lax.while_loop` that stops
  as soon as every element has halted or reached its per-request step budget, so compute not
  needed is not spent.

Steps either reuse one block (recurrent / Universal Transformer) or use a distinct block each
(an early-exit stack); distinct blocks are stored stacked on a leading axis and indexed by step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn import halting as H
from adaptive.nn.blocks import ResidualMLPBlock, ResidualMoEBlock, RNNCell, TransformerBlock


class ModelOutput(NamedTuple):
    """What training reads. Per-step fields are None for policies that do not use them."""

    logits_BxC: jax.Array  # the prediction scored for accuracy
    steps_B: jax.Array  # float32: steps of compute per example (expected, for PonderNet)
    ponder_B: jax.Array  # differentiable compute: ACT's N + R, PonderNet's E[steps]
    step_logits_NxBxC: jax.Array | None = None  # PonderNet / early exit: each step's prediction
    step_weights_NxB: jax.Array | None = None  # PonderNet: halting distribution; exits: uniform
    aux_loss: jax.Array | float = 0.0  # MoE load-balancing and z-losses, mean over steps
    metrics: dict | None = None  # MoE routing metrics (moe/...), mean over steps
    experts_B: jax.Array | None = None  # MoE: expert applications per example over the steps run
    expert_ponder_B: jax.Array | None = None  # the same, differentiable through top-p routing


class Inference(NamedTuple):
    logits_BxC: jax.Array
    steps_B: jax.Array  # int32: blocks applied to each example, <= min(budget, max_steps)
    experts_B: jax.Array | None = None  # int32: expert applications per example (MoE models)


class Trajectory(NamedTuple):
    """Every step's state, halting logit and prediction, up to the cap (training, evaluation)."""

    states_NxBx_xD: jax.Array
    halt_logits_NxH: jax.Array | None
    logits_NxBxC: jax.Array | None  # None for ACT, which reads out the weighted state instead
    aux_N: jax.Array | None = None  # MoE aux loss of each step
    moe_metrics: dict | None = None  # MoE metrics of each step
    experts_NxB: jax.Array | None = None  # MoE: expert applications per example at each step
    soft_experts_NxB: jax.Array | None = None  # the same, differentiable (top-p routing)


def _stack(make, count: int, rngs: nnx.Rngs):
    """`count` independently initialised modules, their parameters stacked on axis 0."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(r):
        return make(r)

    return build(rngs)


class DepthModel(nnx.Module):
    def __init__(
        self, model_cfg, halting_cfg, input_shape: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs, moe_cfg=None
    ):
        self.kind, self.policy = model_cfg.kind, halting_cfg.policy
        self.moe = moe_cfg is not None and moe_cfg.enabled
        if self.moe and self.kind == "rnn":
            raise ValueError("moe.enabled needs model.kind 'mlp' or 'transformer' (the rnn cell has no feed-forward)")
        self.halting = halting_cfg
        self.num_steps = model_cfg.depth if self.policy == "none" else halting_cfg.max_steps
        self.shared = model_cfg.share_weights
        d_in, width = math.prod(input_shape), model_cfg.hidden
        self.sequence = self.kind == "transformer"

        if self.kind == "rnn":
            make = lambda r: RNNCell(d_in, width, rngs=r)  # noqa: E731
        elif self.kind == "mlp":
            self.encoder = nnx.Linear(d_in, width, rngs=rngs)
            if moe_cfg is not None and moe_cfg.enabled:
                make = lambda r: ResidualMoEBlock(width, moe_cfg, rngs=r)  # noqa: E731
            else:
                make = lambda r: ResidualMLPBlock(width, rngs=r)  # noqa: E731
        else:
            self.token_proj = nnx.Linear(1, width, rngs=rngs)
            self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d_in, width)))
            self.step_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (self.num_steps, width)))
            moe = moe_cfg if moe_cfg is not None and moe_cfg.enabled else None
            make = lambda r: TransformerBlock(width, model_cfg.num_heads, moe, rngs=r)  # noqa: E731
        # A shared block is stored as is: slicing a stack of one inside the step loop costs ~10%.
        self.blocks = make(rngs) if self.shared else _stack(make, self.num_steps, rngs)
        self.final_norm = nnx.LayerNorm(width, rngs=rngs) if self.sequence else None

        self.per_step_heads = self.policy == "early_exit" and not self.shared
        make_head = lambda r: nnx.Linear(width, num_classes, rngs=r)  # noqa: E731
        self.heads = _stack(make_head, self.num_steps, rngs) if self.per_step_heads else make_head(rngs)
        if self.policy in ("act", "pondernet"):
            self.halt_unit = nnx.Linear(width, 1, bias_init=nnx.initializers.constant(halting_cfg.bias_init), rngs=rngs)

    # -- the pieces every execution mode uses ---------------------------------------------------

    def encode(self, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(initial state, context seen at every step)."""
        x = x_BxD.reshape(x_BxD.shape[0], -1)
        if self.kind == "rnn":
            return jnp.zeros((x.shape[0], self.blocks.recurrent.kernel.shape[-1]), x.dtype), x
        if self.kind == "mlp":
            return jax.nn.relu(self.encoder(x)), x
        return self.token_proj(x[..., None]) + self.positions[...], x

    def step(self, h, context, t: jax.Array | int, *, train: bool = True, k_active=None):
        """Applies step t (1-based) to state h: (new state, the MoE layer's output or None)."""
        block = self.blocks if self.shared else _select(self.blocks, t)
        if self.sequence:
            h = h + self.step_embedding[...][t - 1]
        if self.kind == "rnn":
            return block(h, context, t == 1), None
        if self.moe:
            return block(h, train=train, k_active=k_active)
        return block(h), None

    def readout(self, h, t: jax.Array | int):
        """Logits from a state; sequences are mean-pooled over positions."""
        if self.sequence:
            h = self.final_norm(h.mean(axis=1))
        return (_select(self.heads, t) if self.per_step_heads else self.heads)(h)

    def halt_logit(self, h):
        """The halting unit's logit: per position for a sequence under ACT, else per example."""
        if self.sequence and self.policy == "pondernet":
            h = h.mean(axis=1)
        return self.halt_unit(h)[..., 0]

    # -- execution modes ------------------------------------------------------------------------

    def trajectory(self, x_BxD: jax.Array, *, train: bool = True, k_active=None) -> Trajectory:
        """Runs all `num_steps` steps under `lax.scan` and keeps what each step produced
        (`train=False`: experts with their evaluation capacity, at most `k_active` a token)."""
        h0, context = self.encode(x_BxD)

        def body(h, t):
            h, moe = self.step(h, context, t, train=train, k_active=k_active)
            halt = self.halt_logit(h) if self.policy in ("act", "pondernet") else None
            # ACT reads out the mean-field state once; the others need every step's prediction.
            logits = None if self.policy == "act" else self.readout(h, t)
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
        batch = x_BxD.shape[0]
        if self.policy == "none":
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

    def combine(self, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        """The policy's weights over a trajectory, halting by `limit_B` at the latest."""
        n = traj.states_NxBx_xD.shape[0]
        if self.policy == "act":
            limit = limit_B[:, None] if self.sequence else limit_B
            halting = H.act_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit, self.halting.eps)
            w = halting.weights_NxH[..., None]
            state = (w * traj.states_NxBx_xD).sum(0)
            steps, ponder = halting.steps_H, halting.ponder_H
            if self.sequence:  # an example computes while any of its positions does
                steps, ponder = steps.max(-1), ponder.mean(-1)
            return ModelOutput(self.readout(state, n), steps.astype(jnp.float32), ponder)
        if self.policy == "pondernet":
            halting = H.pondernet_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit_B)
            logits = (halting.weights_NxH[..., None] * traj.logits_NxBxC).sum(0)
            return ModelOutput(logits, halting.ponder_H, halting.ponder_H, traj.logits_NxBxC, halting.weights_NxH)
        steps = jnp.minimum(limit_B, n)
        weights = (H.step_numbers(n, traj.logits_NxBxC[..., 0]) <= steps).astype(jnp.float32) / steps
        last = jnp.take_along_axis(traj.logits_NxBxC, (steps - 1)[None, :, None], axis=0)[0]
        steps = steps.astype(jnp.float32)
        return ModelOutput(last, steps, steps, traj.logits_NxBxC, weights)

    def infer(
        self, x_BxD: jax.Array, budget_B: jax.Array, key: jax.Array | None = None, k_active: jax.Array | None = None
    ) -> Inference:
        """Inference under a per-example step budget, stopping when every example has halted.

        The budget is clipped to [1, num_steps] inside the graph too, so no input and no
        parameters can make an example use more than min(budget, cap) steps. `k_active` caps
        experts per token at inference (MoE models; at most moe.k, which is compiled in).
        """
        batch = x_BxD.shape[0]
        limit_B = jnp.clip(jnp.broadcast_to(budget_B, (batch,)).astype(jnp.int32), 1, self.num_steps)
        h0, context = self.encode(x_BxD)
        if self.policy == "none":
            h, experts = h0, jnp.zeros((batch,), jnp.int32)
            for t in range(1, self.num_steps + 1):
                h, moe = self.step(h, context, t, train=False, k_active=k_active)
                experts = experts + (0 if moe is None else _experts_per_example(moe, batch))
            steps = jnp.full((batch,), self.num_steps, jnp.int32)
            return Inference(self.readout(h, self.num_steps), steps, experts if self.moe else None)
        per_position = self.sequence and self.policy == "act"
        limit = limit_B[:, None] if per_position else limit_B
        run0 = H.start(h0.shape[:2] if per_position else (batch,))
        # ACT accumulates the mean-field state; the others keep the halting step's logits.
        acc0 = jnp.zeros_like(h0) if self.policy == "act" else jnp.zeros((batch, self._num_classes()), h0.dtype)
        key = jax.random.key(0) if key is None else key

        def cond(carry):
            t, _, run, _, _ = carry
            return (t < self.num_steps) & ~jnp.all(run.halted_H)

        def body(carry):
            t, h, run, acc, experts = carry
            t = t + 1
            active_B = ~(run.halted_H.all(-1) if per_position else run.halted_H)
            h, moe = self.step(h, context, t, train=False, k_active=k_active)
            if moe is not None:  # count the experts of examples still computing
                experts = experts + jnp.where(active_B, _experts_per_example(moe, batch), 0)
            if self.policy == "act":
                run, w = H.act_update(run, t, jax.nn.sigmoid(self.halt_logit(h)), limit, self.halting.eps)
                return t, h, run, acc + w[..., None] * h, experts
            logits = self.readout(h, t)
            if self.policy == "pondernet":
                lam = jax.nn.sigmoid(self.halt_logit(h))
                if self.halting.pondernet_inference == "sample":
                    run, now = H.pondernet_sample_update(run, t, lam, limit, jax.random.fold_in(key, t))
                else:
                    run, now = H.pondernet_update(run, t, lam, limit, self.halting.pondernet_threshold)
            else:
                conf = H.confidence(logits, self.halting.confidence)
                run, now = H.exit_update(run, t, conf, limit, self.halting.exit_threshold)
            return t, h, run, jnp.where(now[:, None], logits, acc), experts

        carry0 = (jnp.int32(0), h0, run0, acc0, jnp.zeros((batch,), jnp.int32))
        _, _, run, acc, experts = jax.lax.while_loop(cond, body, carry0)
        experts = experts if self.moe else None
        if self.policy == "act":
            steps = run.steps_H.max(-1) if per_position else run.steps_H
            return Inference(self.readout(acc, self.num_steps), steps, experts)
        return Inference(acc, run.steps_H, experts)

    def infer_from_trajectory(self, traj: Trajectory, limit_B: jax.Array) -> Inference:
        """What `infer` returns under `limit_B`, computed from a full trajectory instead.

        One trajectory serves every budget, which is how evaluation sweeps budgets cheaply, and
        it is the reference the while_loop is tested against. (Sampled PonderNet halting draws
        its own coins, so it has no trajectory equivalent.)
        """
        limit_B = jnp.clip(limit_B, 1, self.num_steps).astype(jnp.int32)
        if self.policy == "none":
            raise ValueError("a static model has no trajectory; call it directly")
        if self.policy == "act":
            out = self.combine(traj, limit_B)
            return Inference(out.logits_BxC, out.steps_B.astype(jnp.int32))
        if self.policy == "pondernet":
            if self.halting.pondernet_inference == "sample":
                raise ValueError("sampled PonderNet halting has no trajectory equivalent")
            weights = H.pondernet_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit_B).weights_NxH
            steps = H.pondernet_halt_step(weights, limit_B, self.halting.pondernet_threshold)
        else:
            conf = H.confidence(traj.logits_NxBxC, self.halting.confidence)
            steps = H.exit_halt_step(conf, limit_B, self.halting.exit_threshold)
        logits = jnp.take_along_axis(traj.logits_NxBxC, (steps - 1)[None, :, None], axis=0)[0]
        return Inference(logits, steps)

    def _num_classes(self) -> int:
        return self.heads.kernel.shape[-1]


def _experts_per_example(moe, batch: int) -> jax.Array:
    """Expert applications per example in one step (vector models route one token per example)."""
    return moe.experts_T.reshape(batch, -1).sum(-1)


def _mean_over_steps(aux: list, metrics: list) -> tuple:
    if not aux:
        return 0.0, None
    return sum(aux) / len(aux), jax.tree.map(lambda *m: sum(m) / len(m), *metrics)


def _select(stacked: nnx.Module, t: jax.Array | int) -> nnx.Module:
    """The module of step t (1-based) from modules stacked on a leading axis."""
    graphdef, state = nnx.split(stacked)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[t - 1], state))
