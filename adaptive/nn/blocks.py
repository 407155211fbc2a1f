"""The blocks that models are assembled from (and that halting/experts will wrap)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn.moe import MoEFeedForward, MoEOutput


class RNNCell(nnx.Module):
    """Graves' parity cell: h' = tanh(W_x [x, first] + W_h h + b).

    The whole input vector is shown at every step, with a flag that is 1 only on the first
    step (Graves 2016, section 3), so extra steps are extra computation on the same input.
    """

    def __init__(self, d_in: int, hidden: int, *, rngs: nnx.Rngs):
        self.input_proj = nnx.Linear(d_in + 1, hidden, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)

    def __call__(self, h_BxH: jax.Array, x_BxD: jax.Array, first: bool | jax.Array = False) -> jax.Array:
        flag_Bx1 = jnp.full((x_BxD.shape[0], 1), first, x_BxD.dtype)
        return jnp.tanh(self.input_proj(jnp.concatenate([x_BxD, flag_Bx1], -1)) + self.recurrent(h_BxH))


class ResidualMLPBlock(nnx.Module):
    """h + W2 relu(W1 LN(h)): a block that can be stacked deep or reused at every step."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.up = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
        self.down = nnx.Linear(2 * hidden, hidden, rngs=rngs)

    def __call__(self, h_BxD: jax.Array) -> jax.Array:
        return h_BxD + self.down(jax.nn.relu(self.up(self.norm(h_BxD))))


def make_moe(width: int, cfg, *, rngs: nnx.Rngs) -> MoEFeedForward:
    """The MoE feed-forward layer a MoEConfig describes, for blocks of `width`; expert-parallel
    only when `cfg` is a `config.MoELayers` that says so (as `build_model` makes it)."""
    return MoEFeedForward(
        width,
        cfg.expert_width(width),
        cfg.num_experts,
        k=cfg.k,
        router=cfg.router,
        top_p=cfg.top_p,
        capacity_factor=cfg.capacity_factor,
        eval_capacity_factor=cfg.eval_capacity_factor,
        renormalize=cfg.renormalize,
        priority=cfg.priority,
        jitter=cfg.jitter,
        balance_weight=cfg.balance_weight,
        z_weight=cfg.z_weight,
        dropless=cfg.dropless,
        eval_dropless=cfg.eval_dropless,
        dispatch=cfg.dispatch,
        block_size=cfg.block_size,
        num_groups=cfg.num_groups,
        expert_parallel=getattr(cfg, "expert_parallel", False),
        rngs=rngs,
    )


class ResidualMoEBlock(nnx.Module):
    """h + MoE(LN(h)) on vectors: each example is a token routed to its own experts."""

    def __init__(self, hidden: int, moe_cfg, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.moe = make_moe(hidden, moe_cfg, rngs=rngs)

    def __call__(self, h_BxD: jax.Array, *, train: bool = True, k_active=None) -> tuple[jax.Array, MoEOutput]:
        out = self.moe(self.norm(h_BxD), train=train, k_active=k_active)
        return h_BxD + out.y_TxD, out


class TransformerBlock(nnx.Module):
    """Pre-LN self-attention + feed-forward over positions: the Universal Transformer's step.

    With a MoEConfig the feed-forward is sparse experts over all B x L positions (a Sparse
    Universal Transformer when the block is repeated under ACT).
    """

    def __init__(self, hidden: int, num_heads: int, moe_cfg=None, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=num_heads, in_features=hidden, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.moe = make_moe(hidden, moe_cfg, rngs=rngs) if moe_cfg is not None else None
        if self.moe is None:
            self.up = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
            self.down = nnx.Linear(2 * hidden, hidden, rngs=rngs)

    def __call__(self, h_BxLxD: jax.Array, *, train: bool = True, k_active=None):
        h = h_BxLxD + self.attention(self.norm1(h_BxLxD))
        if self.moe is None:
            return h + self.down(jax.nn.gelu(self.up(self.norm2(h))))
        batch, length, width = h.shape
        out = self.moe(self.norm2(h).reshape(batch * length, width), train=train, k_active=k_active)
        # expert applications per example
        per_example = lambda v: v.reshape(batch, length).sum(-1)  # noqa: E731
        out = out._replace(experts_T=per_example(out.experts_T), soft_experts_T=per_example(out.soft_experts_T))
        return h + out.y_TxD.reshape(batch, length, width), out
