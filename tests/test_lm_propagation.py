"""Propagated keys and values written late (adaptive.nn.lm_propagation) give the full pass's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive.nn.lm import LanguageModel
from adaptive.nn.lm_decode import TokenLimits, cached_forward, empty_cache
from adaptive.nn.lm_propagation import WINDOW

LENGTH, PROMPT = 40, 4


def _longest_skip_then_reached(layers_L: np.ndarray, block: int) -> int:
    """The longest run of decoded tokens that exit below `block` and are followed by one that
    runs it (what a late write must catch up on)."""
    best = run = 0
    for depth in layers_L[PROMPT:]:
        if depth <= block:
            run += 1
        else:
            best, run = max(best, run), 0
    return best


@pytest.mark.parametrize("batch", [1, 2])
def test_blocks_a_step_skips_write_later_and_decoding_still_gives_the_full_pass_logits(batch):
    """Most tokens exit after the first block: the blocks above are skipped by runs of tokens
    longer than a window and written when a later token runs them (or a window fills), and
    every decoded token's logits are the full pass's. A chunk of several tokens run over a cache
    that still owes positions (a second prompt) catches up first."""
    model = LanguageModel(vocab=256, width=32, layers=4, heads=4, max_length=LENGTH, exits=True, rngs=nnx.Rngs(2))
    tokens = jnp.asarray(np.random.default_rng(7).integers(0, 256, (batch, LENGTH)), jnp.int32)
    threshold = float(jnp.quantile(model(tokens, train=False).exit_scores_ExBxL[0], 0.2))
    full = model(tokens, train=False, exit_threshold=threshold)
    layers = np.asarray(full.layers_BxL)
    assert max(_longest_skip_then_reached(row, 1) for row in layers) >= WINDOW  # the pattern this test is for
    assert (layers[:, PROMPT:] > 1).any()

    limits = TokenLimits.full(model, batch)._replace(threshold_B=jnp.full((batch,), threshold))
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, *args: cached_forward(nnx.merge(graphdef, params), *args))
    positions = jnp.broadcast_to(jnp.arange(LENGTH), (batch, LENGTH))
    cache = empty_cache(model, batch, LENGTH)
    chunk = LENGTH - 3  # the last 3 tokens run as one chunk, like a prompt
    prompt = (tokens[:, :PROMPT], positions[:, :PROMPT], jnp.ones((batch, PROMPT), bool))
    logits, cache, _ = forward(params, cache, *prompt, limits)
    pieces, most_owed = [logits], 0
    for t in range(PROMPT, chunk):
        one = (tokens[:, t : t + 1], positions[:, t : t + 1], jnp.ones((batch, 1), bool))
        logits, cache, _ = forward(params, cache, *one, limits)
        pieces.append(logits)
        most_owed = max(most_owed, int((t + 1 - cache.written_BxN).max()))
    assert most_owed >= WINDOW - 1  # blocks owed positions: they were not written at once
    assert int((chunk - cache.written_BxN).max()) > 0  # the chunk starts over a cache that owes
    rest = (tokens[:, chunk:], positions[:, chunk:], jnp.ones((batch, LENGTH - chunk), bool))
    logits, cache, _ = forward(params, cache, *rest, limits)
    pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full.logits_BxLxV, rtol=2e-5, atol=2e-5)
    assert int(cache.written_BxN.min()) == LENGTH
