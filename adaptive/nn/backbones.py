"""Backbones: what a depth model computes at each step, apart from when it stops.

A backbone builds the model's parameters and offers three functions over them:

    encode(model, x)                      -> (initial state, context seen at every step)
    step(model, h, context, t, ...)       -> (new state, the MoE layer's output or None)
    features(model, h)                    -> what the output head reads (a pooled sequence)

It is a frozen dataclass (static, hashable) and stores its modules as attributes of the model
it builds, so parameter paths stay `encoder`, `blocks`, `heads`, ... at the top of the tree:
checkpoints do not depend on which file holds the code. A new model kind is one class here (or
in its own file) plus its line in `BACKBONES`; halting policies never see the kind.

Steps either reuse one block (recurrent / Universal Transformer) or use a distinct block each
(an early-exit stack); distinct blocks are stored stacked on a leading axis and indexed by step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn.blocks import ResidualMLPBlock, ResidualMoEBlock, RNNCell, TransformerBlock


@dataclass(frozen=True)
class Backbone(ABC):
    shared: bool  # one block reused at every step, or a distinct block per step
    moe: bool  # blocks whose feed-forward is sparse experts

    kind: ClassVar[str] = ""
    sequence: ClassVar[bool] = False  # states are B x L x D, pooled over positions for the head

    @abstractmethod
    def build(self, model, model_cfg, moe_cfg, d_in: int, num_steps: int, rngs: nnx.Rngs) -> None:
        """Creates the backbone's modules as attributes of `model` (in a fixed order: the
        order draws parameters from `rngs`)."""

    @abstractmethod
    def encode(self, model, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(initial state, context every step reads) for inputs `x_BxD`."""

    def step(self, model, h, context, t: jax.Array | int, *, train: bool = True, k_active=None):
        """Applies step t (1-based) to state h: (new state, the MoE layer's output or None)."""
        block = model.blocks if self.shared else select(model.blocks, t)
        if self.moe:
            return block(h, train=train, k_active=k_active)
        return block(h), None

    def features(self, model, h: jax.Array) -> jax.Array:
        return h

    def row_reductions(self, model) -> tuple[int, ...]:
        """Elements per example of the reductions a step of the blocks makes over each example's
        values (norms, softmaxes, sums): what in-batch compaction must know to keep a row's bits
        (adaptive.nn.compaction.smallest_bucket). `DepthModel.compaction_buckets` adds the
        halting unit's and the readout's."""
        return ()

    def readout_reductions(self, model) -> tuple[int, ...]:
        """Elements per example of the reductions `features` makes (a readout inside the loop)."""
        return ()

    def positions(self, model) -> int:
        """Positions per example (1 for a vector state)."""
        return 1

    def _moe_reductions(self, model) -> tuple[int, ...]:
        # the router's softmax over experts, and the sum of the k kept weights it renormalises by
        if not self.moe:
            return ()
        return (model.blocks.moe.num_experts, model.blocks.moe.k)

    def _blocks(self, make, num_steps: int, rngs: nnx.Rngs):
        # A shared block is stored as is, not as a stack of one sliced inside the step loop.
        return make(rngs) if self.shared else stack(make, num_steps, rngs)


class RNN(Backbone):
    """Graves' parity cell; the input is shown at every step (flagged on the first)."""

    kind = "rnn"

    def build(self, model, model_cfg, moe_cfg, d_in, num_steps, rngs) -> None:
        if self.moe:
            raise ValueError("moe.enabled needs model.kind 'mlp' or 'transformer' (the rnn cell has no feed-forward)")
        model.blocks = self._blocks(lambda r: RNNCell(d_in, model_cfg.hidden, rngs=r), num_steps, rngs)

    def encode(self, model, x_BxD):
        x = x_BxD.reshape(x_BxD.shape[0], -1)
        return jnp.zeros((x.shape[0], model.blocks.recurrent.kernel.shape[-1]), x.dtype), x

    def step(self, model, h, context, t, *, train=True, k_active=None):
        block = model.blocks if self.shared else select(model.blocks, t)
        return block(h, context, t == 1), None


class MLP(Backbone):
    """A linear encoder, then residual MLP (or MoE) blocks on the flattened input."""

    kind = "mlp"

    def build(self, model, model_cfg, moe_cfg, d_in, num_steps, rngs) -> None:
        width = model_cfg.hidden
        model.encoder = nnx.Linear(d_in, width, rngs=rngs)
        if self.moe:
            make = lambda r: ResidualMoEBlock(width, moe_cfg, rngs=r)  # noqa: E731
        else:
            make = lambda r: ResidualMLPBlock(width, rngs=r)  # noqa: E731
        model.blocks = self._blocks(make, num_steps, rngs)

    def encode(self, model, x_BxD):
        x = x_BxD.reshape(x_BxD.shape[0], -1)
        return jax.nn.relu(model.encoder(x)), x

    def row_reductions(self, model) -> tuple[int, ...]:
        return (model.encoder.kernel.shape[-1], *self._moe_reductions(model))  # each block's LayerNorm


class Transformer(Backbone):
    """Each input feature a token (projected, plus a learned position); a learned embedding of
    the step number is added before each block; the head reads the normalised mean over tokens."""

    kind = "transformer"
    sequence = True

    def build(self, model, model_cfg, moe_cfg, d_in, num_steps, rngs) -> None:
        width = model_cfg.hidden
        model.token_proj = nnx.Linear(1, width, rngs=rngs)
        model.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (d_in, width)))
        model.step_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_steps, width)))
        moe = moe_cfg if self.moe else None
        make = lambda r: TransformerBlock(width, model_cfg.num_heads, moe, rngs=r)  # noqa: E731
        model.blocks = self._blocks(make, num_steps, rngs)
        model.final_norm = nnx.LayerNorm(width, rngs=rngs)

    def encode(self, model, x_BxD):
        x = x_BxD.reshape(x_BxD.shape[0], -1)
        return model.token_proj(x[..., None]) + model.positions[...], x

    def step(self, model, h, context, t, *, train=True, k_active=None):
        return super().step(model, h + model.step_embedding[...][t - 1], context, t, train=train, k_active=k_active)

    def features(self, model, h):
        return model.final_norm(h.mean(axis=1))

    def row_reductions(self, model) -> tuple[int, ...]:
        length, width = model.positions.shape
        heads = model.blocks.attention.num_heads
        # every position's norms; attention's softmax over keys
        return (length * width, heads * length * length, *(length * n for n in self._moe_reductions(model)))

    def readout_reductions(self, model) -> tuple[int, ...]:
        length, width = model.positions.shape
        return (length * width, width)  # the mean over positions, and its norm

    def positions(self, model) -> int:
        return model.positions.shape[0]


BACKBONES: dict[str, type[Backbone]] = {b.kind: b for b in (RNN, MLP, Transformer)}


def backbone_of(model_cfg, moe_cfg=None) -> Backbone:
    """The backbone a ModelConfig names (with experts when `moe_cfg` is enabled)."""
    if model_cfg.kind not in BACKBONES:
        raise ValueError(f"model.kind {model_cfg.kind!r} is not one of {tuple(BACKBONES)}")
    return BACKBONES[model_cfg.kind](model_cfg.share_weights, moe_cfg is not None and moe_cfg.enabled)


def stack(make, count: int, rngs: nnx.Rngs):
    """`count` independently initialised modules, their parameters stacked on axis 0."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(r):
        return make(r)

    return build(rngs)


def select(stacked: nnx.Module, t: jax.Array | int) -> nnx.Module:
    """The module of step t (1-based) from modules stacked on a leading axis."""
    graphdef, state = nnx.split(stacked)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[t - 1], state))
