"""The language model on new tokens over a KV cache: prefill and one decode step alike.

`cached_forward` runs T new tokens of each sequence (a padded prompt, or one generated token)
through the blocks, every token by the rule the full forward pass applies at a threshold
(adaptive.nn.lm), so decoding a text gives the logits the full pass gives on it:

- a token leaves after block i when its exit's confidence reaches its row's threshold, or when
  block i was the last its row's layer cap allows; its state then propagates up (CALM): the
  blocks above it only write its keys and values to their caches, computed from that state, so
  later tokens attend to a complete cache (a model without exits reads a capped token's state
  through the final norm);
- a MoD block runs for a token when its causal predictor's logit exceeds the row's `mod_bias`;
  a token that skips it is not a key there;
- a MoE feed-forward gives a token at most its row's expert cap.

In a decode step (one token per sequence) a block runs on only the rows that need it: every
row's keys and values are written first (`fill`); then, when any row still runs it, attention
reads the cache for every row where it lies, and the output projection and feed-forward run on
the running rows, gathered into the smallest of `compact_sizes` that holds them (`lax.switch`;
none: the block is skipped). At batch 1 the blocks above a token's exit cost their key/value
projection only. Limits are traced, so each request's budget is a runtime input. ACT models
(one shared block, mean-field output) are not decoded here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive.nn.compaction import running_first
from adaptive.nn.lm import LanguageModel
from adaptive.nn.lm_blocks import KVCache


class TokenLimits(NamedTuple):
    """Per sequence (B), traced: the exit threshold (> 1: never confident), the most blocks a
    token may pass (1..blocks), the most experts a token may use, the MoD predictor's bias."""

    threshold_B: jax.Array
    layer_cap_B: jax.Array
    expert_cap_B: jax.Array
    mod_bias_B: jax.Array

    @staticmethod
    def full(model: LanguageModel, batch: int) -> TokenLimits:
        """Every block for every token, the router's k, MoD at bias 0."""
        return TokenLimits(
            jnp.full((batch,), 2.0, jnp.float32),
            jnp.full((batch,), model.num_layers, jnp.int32),
            jnp.full((batch,), 1 << 20, jnp.int32),
            jnp.zeros((batch,), jnp.float32),
        )


class TokenSpend(NamedTuple):
    """What each new token spent, block by block (N x B x T, float32 0/1 or counts), in the form
    adaptive.compute.lm_flops prices: blocks it reached (not exited before), blocks that ran for
    it, and expert applications (None without MoE)."""

    reached_NxBxT: jax.Array
    ran_NxBxT: jax.Array
    experts_NxBxT: jax.Array | None


def compact_sizes(batch: int, most: int = 8) -> tuple[int, ...]:
    """The row counts a compacted block may run on: every count up to `most` sizes, evenly
    spaced up to the batch beyond (each is a compiled branch; a block then runs on at most
    batch / most rows more than need it)."""
    if batch <= most:
        return tuple(range(1, batch + 1))
    return tuple(sorted({math.ceil(batch * (i + 1) / most) for i in range(most)}))


def empty_cache(model: LanguageModel, batch: int, size: int) -> tuple[KVCache, ...]:
    """A cache of `size` positions per sequence for every block."""
    if model.act:
        raise ValueError("decoding an ACT language model (one shared block, halting per position) is not supported")
    return tuple(
        KVCache.empty(batch, size, b.attention.heads, b.attention.head_width, b.attention.dtype) for b in model.blocks
    )


def cached_forward(
    model: LanguageModel,
    caches: tuple[KVCache, ...],
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    valid_BxT: jax.Array,
    limits: TokenLimits,
    *,
    compact: bool = False,
) -> tuple[jax.Array, tuple[KVCache, ...], TokenSpend]:
    """(next-token logits B x T x V, the caches with the new tokens written, what they spent).

    `positions_BxT`: each token's position (its cache slot); `valid_BxT`: False for padding and
    for finished sequences (they are never keys, and spend nothing). `compact` (one token per
    sequence): a block's output projection and feed-forward run on only the rows that need it,
    gathered into the smallest bucket of `compact_sizes` that holds them (a `lax.switch`); its
    attention runs on every row while any needs the block (no cache is gathered)."""
    batch, length = tokens_BxT.shape
    moe = model.blocks[0].moe
    rows_independent = moe is None or moe.rows_independent_at_inference()
    sizes = compact_sizes(batch) if compact and rows_independent else (batch,)
    h = model.embed(tokens_BxT)
    if model.position_embed is not None:
        h = h + model.position_embed(positions_BxT)
    exited = ~valid_BxT
    chosen_state = jnp.zeros_like(h)
    reached, ran, experts, new_caches = [], [], [], []
    last = model.num_layers - 1
    threshold, cap = limits.threshold_B[:, None], limits.layer_cap_B[:, None]
    k_active = jnp.repeat(limits.expert_cap_B, length)[:, None]
    for i, block in enumerate(model.blocks):
        keys, runs, weights = valid_BxT, ~exited, None
        if i in model.mod_layers:  # by the causal predictor, on the state (propagated or not)
            weights, predicted = model.routers[str(i)](h)
            chosen = predicted > limits.mod_bias_B[:, None]
            keys, runs = keys & chosen, runs & chosen
        if length > 1:  # prefill: the whole prompt through the block, its update where it runs
            out, block_moe, cache = block.cached(h, positions_BxT, keys, caches[i], k_active=k_active)
            if weights is not None:
                out = h + weights[..., None] * (out - h)
            used = _experts(block_moe, runs, batch, length)
            h_before, h = h, jnp.where(runs[..., None], out, h)
        else:  # a decode step: every row's keys and values, then the block on the rows that run it
            normed, cache = block.fill(h, positions_BxT, keys, caches[i])
            branches = [_skip] + [_rows_of(block, size, positions_BxT, runs, weights, k_active) for size in sizes]
            # the smallest size holding them: a compare and a sum (searchsorted is a loop of ops)
            bucket = jnp.where(runs.any(), 1 + (jnp.asarray(sizes) < runs.sum()).sum(), 0)
            h_before = h
            h, used = jax.lax.switch(bucket, branches, h, normed, cache)
        reached.append(~exited)
        new_caches.append(cache)
        ran.append(runs)
        experts.append(used)
        if i < last:
            forced = ~exited & (i + 1 >= cap)
            if model.exits:

                def exit_here(h, exited, chosen_state, i=i, forced=forced, h_before=h_before):
                    state = model.exit_norms[i](h)
                    need_logits = model.confidence in ("max_prob", "margin")
                    logits = model.embed.attend(state) if need_logits else None
                    score = model._confidence(i, logits, h, h_before)
                    leaving = ~exited & ((score >= threshold) | forced)
                    return exited | leaving, jnp.where(leaving[..., None], state, chosen_state)

                exited, chosen_state = jax.lax.cond(
                    exited.all(), lambda h, e, c: (e, c), exit_here, h, exited, chosen_state
                )
            else:
                chosen_state = jnp.where(forced[..., None], model.final_norm(h), chosen_state)
                exited = exited | forced
    state = jnp.where(exited[..., None] & valid_BxT[..., None], chosen_state, model.final_norm(h))
    logits = model.embed.attend(state)
    spend = TokenSpend(
        jnp.stack(reached).astype(jnp.float32) * valid_BxT,
        jnp.stack(ran).astype(jnp.float32),
        jnp.stack(experts) if model.blocks[0].moe is not None else None,
    )
    return logits, tuple(new_caches), spend


def _experts(moe, runs_BxT, batch: int, length: int) -> jax.Array:
    if moe is None:
        return jnp.zeros((batch, length), jnp.float32)
    return jnp.where(runs_BxT, moe.experts_T.reshape(batch, length), 0).astype(jnp.float32)


def _skip(h, normed, cache):
    return h, jnp.zeros(h.shape[:2], jnp.float32)


def _rows_of(block, size: int, positions_BxT, runs_BxT, weights_BxT, k_active):
    """The block for the `size` rows that run it (a decode step, T = 1): attention on every row
    over the cache, the rest on the gathered running rows first, padded with others, whose
    results are dropped; all rows when size is the batch."""
    batch = runs_BxT.shape[0]

    def on(h, normed, cache):
        if size < batch:
            rows = running_first(runs_BxT[:, 0], size)
            pick, put = (lambda a: a[rows]), (lambda a, part: a.at[rows].set(part))
        else:  # every row: no gather or scatter to launch
            rows, pick, put = None, (lambda a: a), (lambda a, part: part)
        out, moe = block.read_rows(h, normed, positions_BxT, cache, rows, k_active=pick(k_active))
        if weights_BxT is not None:
            out = pick(h) + pick(weights_BxT)[..., None] * (out - pick(h))
        taken = pick(runs_BxT)
        new_h = put(h, jnp.where(taken[..., None], out, pick(h)))
        used = put(jnp.zeros((batch, 1), jnp.float32), _experts(moe, taken, size, 1))
        return new_h, used

    return on
