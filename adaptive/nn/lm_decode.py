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

A block none of the tokens still needs is not run at all (`lax.cond`): at batch 1 the layers
above a token's exit cost their key/value projection only. Limits are traced, so each request's
budget is a runtime input. ACT models (one shared block, mean-field output) are not decoded here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

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


def empty_cache(model: LanguageModel, batch: int, size: int) -> tuple[KVCache, ...]:
    """A cache of `size` positions per sequence for every block."""
    if model.act:
        raise ValueError("decoding an ACT language model (one shared block, halting per position) is not supported")
    attention = model.blocks[0].attention
    head_width = model.embed.features // attention.heads
    return tuple(KVCache.empty(batch, size, attention.heads, head_width, attention.dtype) for _ in model.blocks)


def cached_forward(
    model: LanguageModel,
    caches: tuple[KVCache, ...],
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    valid_BxT: jax.Array,
    limits: TokenLimits,
) -> tuple[jax.Array, tuple[KVCache, ...], TokenSpend]:
    """(next-token logits B x T x V, the caches with the new tokens written, what they spent).

    `positions_BxT`: each token's position (its cache slot); `valid_BxT`: False for padding and
    for finished sequences (they are never keys, and spend nothing)."""
    batch, length = tokens_BxT.shape
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
        routed = i in model.mod_layers

        def run(h, cache, exited, i=i, block=block, routed=routed):
            active = ~exited
            if routed:
                weights, predicted = model.routers[str(i)](h)
                chosen = predicted > limits.mod_bias_B[:, None]
                out, moe, cache = block.cached(h, positions_BxT, chosen & valid_BxT, cache, k_active=k_active)
                new_h = jnp.where(chosen[..., None], h + weights[..., None] * (out - h), h)
                ran_here = chosen & active
            else:
                new_h, moe, cache = block.cached(h, positions_BxT, valid_BxT, cache, k_active=k_active)
                ran_here = active
            new_h = jnp.where(exited[..., None], h, new_h)  # an exited token's state stays
            used = jnp.zeros((batch, length), jnp.float32)
            if moe is not None:
                used = jnp.where(ran_here, moe.experts_T.reshape(batch, length), 0).astype(jnp.float32)
            return new_h, cache, ran_here, used

        def fill(h, cache, exited, i=i, block=block, routed=routed):
            keys = valid_BxT
            if routed:
                keys = keys & (model.routers[str(i)](h)[1] > limits.mod_bias_B[:, None])
            cache = block.fill(h, positions_BxT, keys, cache)
            return h, cache, jnp.zeros((batch, length), bool), jnp.zeros((batch, length), jnp.float32)

        reached.append(~exited)
        h_before = h
        if i == 0:
            h, cache, ran_here, used = run(h, caches[i], exited)
        else:  # no token still needs the block: only the propagated states' keys and values
            h, cache, ran_here, used = jax.lax.cond(exited.all(), fill, run, h, caches[i], exited)
        new_caches.append(cache)
        ran.append(ran_here)
        experts.append(used)
        if i < last:
            forced = ~exited & (i + 1 >= cap)
            if model.exits:

                def exit_here(h, exited, chosen_state, i=i, forced=forced, h_before=h_before):
                    normed = model.exit_norms[i](h)
                    need_logits = model.confidence in ("max_prob", "margin")
                    logits = model.embed.attend(normed) if need_logits else None
                    score = model._confidence(i, logits, h, h_before)
                    leaving = ~exited & ((score >= threshold) | forced)
                    return exited | leaving, jnp.where(leaving[..., None], normed, chosen_state)

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
