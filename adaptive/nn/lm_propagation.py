"""CALM's propagated keys and values, written when a later token needs them rather than at once.

A token that exits after block i still owes the blocks above it its keys and values (CALM: each
computed from its state where it left), since later tokens attend to it there. Writing them in
the step the token exits makes every block it skips cost a norm, a key/value projection and
three cache writes: a third of a block that runs, and a one-token decode step on a CPU is bound
by those launches. So a decode step writes nothing in a block that no token of the batch runs;
the token's state is kept (`DecodeCache.states_BxSxD`), and the first later step that runs the
block writes every position still owed there in one batch of `WINDOW` positions, before its
attention reads the cache. A block skipped `WINDOW - 1` steps in a row writes anyway, so a
window always covers what is owed.

A Mixture-of-Depths block writes at once (its keys depend on the predictor's choice per token,
which is not kept). The keys and values are those the eager write would give, computed from the
same state, up to the rounding of a many-row product against a one-row one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive.nn.lm_blocks import KVCache

# Positions one catch-up write covers: a block a whole batch skips writes at least every
# WINDOW - 1 steps, and a write projects WINDOW positions (most of them masked out) per row.
WINDOW = 8


class DecodeCache(NamedTuple):
    """What decoding carries from step to step: each block's keys and values, each token's state
    where it left the blocks (for the blocks above it that still owe its keys and values), whether
    that token may be attended to, and per sequence and block the first slot not yet written.
    Every array is batch first, as a server's slots put a sequence's row along the first axis."""

    blocks: tuple[KVCache, ...]
    states_BxSxD: jax.Array
    keys_BxS: jax.Array
    written_BxN: jax.Array

    @staticmethod
    def empty(blocks: tuple[KVCache, ...], width: int, dtype) -> DecodeCache:
        batch, size = blocks[0].keys_BxS.shape
        return DecodeCache(
            blocks,
            jnp.zeros((batch, size, width), dtype),
            jnp.zeros((batch, size), bool),
            jnp.zeros((batch, len(blocks)), jnp.int32),
        )

    def kept(self, h_BxTxD, positions_BxT, keys_BxT) -> DecodeCache:
        """The new tokens' final states kept at their positions (a token that exited: its state
        where it left, which the blocks above it still owe keys and values from)."""
        rows = jnp.arange(h_BxTxD.shape[0])[:, None]
        return self._replace(
            states_BxSxD=self.states_BxSxD.at[rows, positions_BxT].set(h_BxTxD.astype(self.states_BxSxD.dtype)),
            keys_BxS=self.keys_BxS.at[rows, positions_BxT].set(keys_BxT),
        )


def owed(written_B, position_B) -> jax.Array:
    """Whether some sequence's block owes positions before `position_B` (`written_B`: the
    block's column of `DecodeCache.written_BxN`): a write must catch up."""
    return (written_B < position_B).any()


def must_write(written_B, position_B) -> jax.Array:
    """Whether the block must write this step even if no token runs it: skipping once more would
    owe more positions than a window covers."""
    return (position_B - written_B >= WINDOW - 1).any()


def write_owed(block, block_cache: KVCache, written_B, kept: DecodeCache, h_BxD, position_B, keys_B, *, catch_up: bool):
    """The block's keys and values of the current token (state `h_BxD`, at `position_B`) written
    into `block_cache`, and with `catch_up` those of the positions it still owes before it, from
    `kept`'s states, in one write: (the block's normed input for the current token, its cache,
    its new `written_B`). Every row writes, as an eager write does (a finished row writes its
    slot as not attendable). Only the block's own arrays go in and out, so a conditional around
    this does not carry (and copy) the other blocks' caches."""
    states, keys, slots = (h_BxD[:, None], keys_B[:, None], position_B[:, None])
    if catch_up:
        owed_states, owed_keys, owed_slots = _owed_window(kept, written_B, position_B)
        states = jnp.concatenate([owed_states.astype(h_BxD.dtype), states], 1)
        keys, slots = jnp.concatenate([owed_keys, keys], 1), jnp.concatenate([owed_slots, slots], 1)
    normed, block_cache = block.fill(states, slots, keys, block_cache)
    return normed[:, -1:], block_cache, position_B + 1


def caught_up(block, cache: DecodeCache, i: int, position_B) -> DecodeCache:
    """The cache with block i's owed positions before `position_B` written (before a prompt of
    several tokens runs the block over a cache that decoding wrote into)."""
    written_B = cache.written_BxN[:, i]

    def catch_up(block_cache):
        states, keys, slots = _owed_window(cache, written_B, position_B)
        return block.fill(states, slots, keys, block_cache)[1]

    block_cache = jax.lax.cond(owed(written_B, position_B), catch_up, lambda c: c, cache.blocks[i])
    return with_block(cache, i, block_cache, jnp.maximum(written_B, position_B))


def with_block(cache: DecodeCache, i: int, block_cache: KVCache, written_B) -> DecodeCache:
    """`cache` with block i's keys and values and its first unwritten slots replaced."""
    blocks = cache.blocks[:i] + (block_cache,) + cache.blocks[i + 1 :]
    return cache._replace(blocks=blocks, written_BxN=cache.written_BxN.at[:, i].set(written_B))


def _owed_window(kept: DecodeCache, written_B, position_B):
    """The WINDOW - 1 positions before `position_B`, B x (WINDOW - 1): their kept states and
    keys, and their slots where the block (first unwritten slots `written_B`) owes them
    (elsewhere the cache's size, which a write drops)."""
    size = kept.keys_BxS.shape[1]
    rows = jnp.arange(position_B.shape[0])[:, None]
    before_BxW = position_B[:, None] - (WINDOW - 1) + jnp.arange(WINDOW - 1)
    owes_BxW = (before_BxW >= written_B[:, None]) & (before_BxW >= 0)
    read = jnp.clip(before_BxW, 0, size - 1)
    return kept.states_BxSxD[rows, read], kept.keys_BxS[rows, read], jnp.where(owes_BxW, before_BxW, size)
