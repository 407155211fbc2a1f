"""The blocks that models are assembled from (and that halting/experts will wrap)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MLPBlock(nnx.Module):
    """Linear -> ReLU: one hidden layer of a plain MLP."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(d_in, d_out, rngs=rngs)

    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        return jax.nn.relu(self.linear(x_BxD))


class RNNCell(nnx.Module):
    """Graves' parity cell: h' = tanh(W_x [x, first] + W_h h + b).

    The whole input vector is shown at every step, with a flag that is 1 only on the first
    step (Graves 2016, section 3), so extra steps are extra computation on the same input.
    """

    def __init__(self, d_in: int, hidden: int, *, rngs: nnx.Rngs):
        self.input_proj = nnx.Linear(d_in + 1, hidden, rngs=rngs)
        self.recurrent = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        self.hidden = hidden

    def initial_state(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.hidden), jnp.float32)

    def __call__(self, h_BxH: jax.Array, x_BxD: jax.Array, first: bool | jax.Array = False) -> jax.Array:
        flag_Bx1 = jnp.full((x_BxD.shape[0], 1), first, x_BxD.dtype)
        return jnp.tanh(self.input_proj(jnp.concatenate([x_BxD, flag_Bx1], -1)) + self.recurrent(h_BxH))


class ResidualMLPBlock(nnx.Module):
    """h + W2 relu(W1 LN(h)): a block that can be stacked deep or reused at every step."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.up = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
        self.down = nnx.Linear(2 * hidden, hidden, rngs=rngs)

    def __call__(self, h_BxD: jax.Array, context=None, first=False) -> jax.Array:
        return h_BxD + self.down(jax.nn.relu(self.up(self.norm(h_BxD))))


class TransformerBlock(nnx.Module):
    """Pre-LN self-attention + MLP over positions: the Universal Transformer's step."""

    def __init__(self, hidden: int, num_heads: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=num_heads, in_features=hidden, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.up = nnx.Linear(hidden, 2 * hidden, rngs=rngs)
        self.down = nnx.Linear(2 * hidden, hidden, rngs=rngs)

    def __call__(self, h_BxLxD: jax.Array, context=None, first=False) -> jax.Array:
        h = h_BxLxD + self.attention(self.norm1(h_BxLxD))
        return h + self.down(jax.nn.gelu(self.up(self.norm2(h))))
