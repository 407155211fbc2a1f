"""The blocks of the causal language model: rotary attention, a pre-LN block, a MoD router.

Attention masks by *positions*, not by index in the array, so a block run on a gathered subset
of a sequence's tokens (Mixture-of-Depths) stays causal: a token attends to the tokens of the
subset at its own position or before.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn.blocks import make_moe
from adaptive.nn.moe import MoEOutput
from adaptive.nn.quantize import QLinear

ROTARY_BASE = 10_000.0


def rotate(x_BxLxHxK: jax.Array, positions_BxL: jax.Array) -> jax.Array:
    """Rotary position embedding (Su et al. 2021): pairs of features (i, i + K/2) turned by the
    angle position * base^(-2i/K), so q . k depends on the positions' difference only."""
    half = x_BxLxHxK.shape[-1] // 2
    freqs = ROTARY_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions_BxL[..., None, None].astype(jnp.float32) * freqs  # B x L x 1 x K/2
    cos, sin = jnp.cos(angle).astype(x_BxLxHxK.dtype), jnp.sin(angle).astype(x_BxLxHxK.dtype)
    a, b = x_BxLxHxK[..., :half], x_BxLxHxK[..., half : 2 * half]
    rotated = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
    return jnp.concatenate([rotated, x_BxLxHxK[..., 2 * half :]], -1)


class CausalAttention(nnx.Module):
    """Multi-head self-attention where a token sees the tokens at its position or before."""

    def __init__(self, width: int, heads: int, *, rotary: bool, dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"model.hidden={width} is not a multiple of model.num_heads={heads}")
        self.heads, self.rotary, self.dtype = heads, rotary, dtype
        self.qkv = nnx.Linear(width, 3 * width, use_bias=False, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, width, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array, keys_BxL: jax.Array | None = None) -> jax.Array:
        """`keys_BxL`: which tokens may be attended to (all when None)."""
        batch, length, width = x_BxLxD.shape
        q, k, v = jnp.split(self.qkv(x_BxLxD).reshape(batch, length, 3, self.heads, -1), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # B x L x H x K
        if self.rotary:
            q, k = rotate(q, positions_BxL), rotate(k, positions_BxL)
        scores = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
        visible = positions_BxL[:, None, None, :] <= positions_BxL[:, None, :, None]  # key at or before query
        if keys_BxL is not None:
            visible = visible & keys_BxL[:, None, None, :]
        weights = jax.nn.softmax(jnp.where(visible, scores, -1e30), axis=-1).astype(v.dtype)
        mixed = jnp.einsum("bhqs,bshk->bqhk", weights, v).reshape(batch, length, -1)
        return self.out(mixed)

    def cached(self, x_BxTxD, positions_BxT, keys_BxT, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Attention of T new tokens over a KV cache whose slot s holds position s: their keys
        and values are written at their positions first (`keys_BxT`: which of them may be
        attended to), then each attends to the cache's attendable slots at or before it."""
        batch, length, width = x_BxTxD.shape
        q, k, v = jnp.split(self.qkv(x_BxTxD).reshape(batch, length, 3, self.heads, -1), 3, axis=2)
        cache = self._write(cache, k[:, :, 0], v[:, :, 0], positions_BxT, keys_BxT)
        return self._attend(q[:, :, 0], positions_BxT, cache), cache

    def read_heads(self, x_BxTxD, positions_BxT, cache: KVCache) -> jax.Array:
        """Attention of T tokens whose keys and values the cache already holds (`fill` wrote
        them), before the output projection: the heads' mixed values, B x T x inner. Only the
        queries are projected."""
        batch, length, width = x_BxTxD.shape
        q = self._project(x_BxTxD, slice(0, self.inner)).reshape(batch, length, self.heads, -1)
        return self._mix(q, positions_BxT, cache)

    def _project(self, x_BxTxD, columns: slice) -> jax.Array:
        """Some columns of the q | k | v projection, computed in the layer's dtype as nnx.Linear
        computes all of them (so a bfloat16 model decodes with the full pass's numbers)."""
        if isinstance(self.qkv, QLinear):  # a quantized model: the same integer matmul, fewer columns
            return self.qkv.columns(x_BxTxD, columns)
        kernel = self.qkv.kernel[...][:, columns].astype(self.dtype)
        return x_BxTxD.astype(self.dtype) @ kernel

    def _attend(self, q_BxTxHxK, positions_BxT, cache: KVCache) -> jax.Array:
        return self.out(self._mix(q_BxTxHxK, positions_BxT, cache))

    def _mix(self, q_BxTxHxK, positions_BxT, cache: KVCache) -> jax.Array:
        batch, length = positions_BxT.shape
        q = rotate(q_BxTxHxK, positions_BxT) if self.rotary else q_BxTxHxK
        scores = jnp.einsum("bqhk,bhks->bhqs", q, cache.k_BxHxKxS).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
        slots_S = jnp.arange(cache.keys_BxS.shape[1])
        visible = cache.keys_BxS[:, None, None, :] & (slots_S <= positions_BxT[:, None, :, None])
        weights = jax.nn.softmax(jnp.where(visible, scores, -1e30), axis=-1).astype(cache.v_BxHxSxK.dtype)
        return jnp.einsum("bhqs,bhsk->bqhk", weights, cache.v_BxHxSxK).reshape(batch, length, -1)

    def fill(self, x_BxTxD, positions_BxT, keys_BxT, cache: KVCache) -> KVCache:
        """Only the keys and values of T tokens written to the cache (an exited token's state
        propagated to a block it skips, CALM): a third of the projection, no attention."""
        batch, length, width = x_BxTxD.shape
        kv = self._project(x_BxTxD, slice(self.inner, None)).reshape(batch, length, 2, self.heads, -1)
        return self._write(cache, kv[:, :, 0], kv[:, :, 1], positions_BxT, keys_BxT)

    @property
    def inner(self) -> int:
        """Columns of each of q, k and v: heads x head width (the model's width unless heads
        were pruned, adaptive.nn.prune)."""
        return self.qkv.kernel.shape[-1] // 3

    @property
    def head_width(self) -> int:
        return self.inner // self.heads

    def _write(self, cache: KVCache, k_BxTxHxK, v_BxTxHxK, positions_BxT, keys_BxT) -> KVCache:
        if self.rotary:
            k_BxTxHxK = rotate(k_BxTxHxK, positions_BxT)
        rows = jnp.arange(k_BxTxHxK.shape[0])[:, None]
        # indices on k's first and last axes and v's first and third: both regions are B x T x H x K
        return KVCache(
            cache.k_BxHxKxS.at[rows, :, :, positions_BxT].set(k_BxTxHxK.astype(cache.k_BxHxKxS.dtype)),
            cache.v_BxHxSxK.at[rows, :, positions_BxT].set(v_BxTxHxK.astype(cache.v_BxHxSxK.dtype)),
            cache.keys_BxS.at[rows, positions_BxT].set(keys_BxT),
        )


class KVCache(NamedTuple):
    """One block's keys and values for decoding: slot s holds position s of each sequence.

    Stored in the layouts attention reads them in (keys B x H x K x S, values B x H x S x K:
    batched matrix products with no operand transposed), so a decode step does not copy each
    block's whole cache into another layout before its one-token attention."""

    k_BxHxKxS: jax.Array
    v_BxHxSxK: jax.Array
    keys_BxS: jax.Array  # bool: the slot may be attended to (written, and not skipped by MoD)

    @staticmethod
    def empty(batch: int, size: int, heads: int, head_width: int, dtype) -> KVCache:
        return KVCache(
            jnp.zeros((batch, heads, head_width, size), dtype),
            jnp.zeros((batch, heads, size, head_width), dtype),
            jnp.zeros((batch, size), bool),
        )


class LMBlock(nnx.Module):
    """h + attention(LN h), then + feed-forward(LN h): a dense GELU MLP or sparse experts."""

    def __init__(self, width: int, heads: int, moe_cfg=None, *, rotary: bool, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = CausalAttention(width, heads, rotary=rotary, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.moe = make_moe(width, moe_cfg, rngs=rngs) if moe_cfg is not None else None
        if self.moe is None:
            self.up = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
            self.down = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)

    def __call__(
        self, h_BxLxD: jax.Array, positions_BxL: jax.Array, *, keys_BxL=None, train: bool = True, k_active=None
    ) -> tuple[jax.Array, MoEOutput | None]:
        """(the block's new state, the MoE layer's output with per-token expert counts, or None);
        `keys_BxL` limits which tokens attention reads (a MoD block's chosen ones)."""
        h = h_BxLxD + self.attention(self.norm1(h_BxLxD), positions_BxL, keys_BxL).astype(h_BxLxD.dtype)
        return self.feed_forward(h, train, k_active)

    def cached(self, h_BxTxD, positions_BxT, keys_BxT, cache: KVCache, *, k_active=None):
        """The block on T new tokens attending over `cache`: (new state, MoE output or None,
        the cache with their keys and values written)."""
        mixed, cache = self.attention.cached(self.norm1(h_BxTxD), positions_BxT, keys_BxT, cache)
        new_h, moe = self.feed_forward(h_BxTxD + mixed.astype(h_BxTxD.dtype), False, k_active)
        return new_h, moe, cache

    def fill(self, h_BxTxD, positions_BxT, keys_BxT, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Only the keys and values of T tokens written (a state that skips this block, or one
        `read_rows` runs next): (the block's normed input, for `read_rows` to reuse; the cache)."""
        normed = self.norm1(h_BxTxD)
        return normed, self.attention.fill(normed, positions_BxT, keys_BxT, cache)

    def read_rows(self, h_BxTxD, normed_BxTxD, positions_BxT, cache: KVCache, rows_R, *, k_active=None):
        """The block on T tokens whose keys and values `fill` already wrote, everything after
        attention on the rows `rows_R` only (None: every row): (their new states, MoE output or
        None). Attention runs on every row, so the cache is read where it lies rather than
        gathered: per row a gather copies about the bytes one-token attention reads, so this
        costs more than a gather only when under about a third of the rows run."""
        heads = self.attention.read_heads(normed_BxTxD, positions_BxT, cache)
        if rows_R is not None:
            h_BxTxD, heads = h_BxTxD[rows_R], heads[rows_R]
        return self.feed_forward(h_BxTxD + self.attention.out(heads).astype(h_BxTxD.dtype), False, k_active)

    def feed_forward(self, h, train: bool, k_active):
        """h + the feed-forward (dense, or experts) of LN h: (new state, MoE output or None)."""
        if self.moe is None:
            return h + self.down(jax.nn.gelu(self.up(self.norm2(h)))).astype(h.dtype), None
        batch, length, width = h.shape
        out = self.moe(self.norm2(h).reshape(batch * length, width), train=train, k_active=k_active)
        return h + out.y_TxD.reshape(batch, length, width).astype(h.dtype), out


class DepthRouter(nnx.Module):
    """Mixture-of-Depths' router (Raposo et al. 2024): a scalar weight per token, whose top
    `capacity` share of each sequence runs the block, and the causal predictor that decides per
    token at decoding time (it reads the state with its gradient stopped, so predicting never
    changes what the router learns)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.weight = nnx.Linear(width, 1, rngs=rngs)
        self.predictor_hidden = nnx.Linear(width, max(8, width // 4), rngs=rngs)
        self.predictor_out = nnx.Linear(max(8, width // 4), 1, rngs=rngs)

    def __call__(self, h_BxLxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(router weights, predictor logits), both B x L."""
        weights = self.weight(h_BxLxD)[..., 0]
        hidden = jax.nn.silu(self.predictor_hidden(jax.lax.stop_gradient(h_BxLxD)))
        return weights, self.predictor_out(hidden)[..., 0]
