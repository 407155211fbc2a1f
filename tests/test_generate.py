"""Decoding: the KV cache gives the full pass's logits, budgets are runtime inputs, caps hold."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive import config as config_lib
from adaptive.compute.lm_flops import lm_flops
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.inference.generate import STOP_REASONS, Decoder, sample
from adaptive.nn.lm import LanguageModel
from adaptive.nn.lm_decode import TokenLimits, cached_forward, empty_cache
from tests.helpers import ROOT
from tests.test_lm import VARIANTS, _model, _moe_cfg

PROMPT, NEW = 8, 8


FAST_VARIANTS = ("exits, state propagation", "mod, causal routing", "experts")


@pytest.mark.parametrize(
    "variant",
    [v if v in FAST_VARIANTS else pytest.param(v, marks=pytest.mark.slow) for v in VARIANTS if "act" not in v],
)
def test_prefill_then_token_by_token_gives_the_full_pass_logits_and_depths(variant):
    kwargs, call = VARIANTS[variant]
    model = _model(moe_cfg=_moe_cfg()) if kwargs == "moe" else _model(**kwargs)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 256, (3, 12)), jnp.int32)
    threshold = 2.0
    if call.get("exit_threshold") == "median":
        threshold = float(jnp.median(model(tokens, train=False).exit_scores_ExBxL[0]))
    full = model(tokens, train=False, exit_threshold=threshold if model.exits else None)
    limits = TokenLimits.full(model, 3)._replace(threshold_B=jnp.full((3,), threshold))
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda params, *args: cached_forward(nnx.merge(graphdef, params), *args))
    caches = empty_cache(model, 3, 16)
    positions = jnp.broadcast_to(jnp.arange(12), (3, 12))
    prompt = (tokens[:, :5], positions[:, :5], jnp.ones((3, 5), bool))
    logits, caches, spend = forward(params, caches, *prompt, limits)
    pieces, ran = [logits], [spend.ran_NxBxT]
    for t in range(5, 12):
        one = (tokens[:, t : t + 1], positions[:, t : t + 1], jnp.ones((3, 1), bool))
        logits, caches, spend = forward(params, caches, *one, limits)
        pieces.append(logits)
        ran.append(spend.ran_NxBxT)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full.logits_BxLxV, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(jnp.concatenate(ran, -1), full.ran_NxBxL)
    if model.exits:  # some tokens left early and some did not: the cache fill was exercised
        assert (full.layers_BxL == 1).any() and (full.layers_BxL > 1).any()


@pytest.mark.parametrize("variant", FAST_VARIANTS)
def test_a_compacted_decode_step_gives_every_row_what_running_all_rows_gives(variant):
    """Rows of mixed depths (thresholds, layer caps, expert caps, MoD biases per row, some rows
    finished): running each block on a bucket of only its rows changes no row's logits, spend
    or cache, whatever the bucket's padding rows hold."""
    kwargs, _ = VARIANTS[variant]
    model = _model(moe_cfg=_moe_cfg()) if kwargs == "moe" else _model(**kwargs)
    batch, prompt, steps = 6, 4, 6
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, 256, (batch, prompt + steps)), jnp.int32)
    limits = TokenLimits.full(model, batch)._replace(
        threshold_B=jnp.asarray(rng.uniform(0.0, 0.6, batch), jnp.float32).at[0].set(2.0),
        layer_cap_B=jnp.asarray([4, 1, 2, 3, 4, 2], jnp.int32),
        expert_cap_B=jnp.asarray(rng.integers(1, 3, batch), jnp.int32),
        mod_bias_B=jnp.asarray(rng.normal(0.0, 0.3, batch), jnp.float32),
    )
    alive = rng.random((steps, batch)) < 0.8
    positions = jnp.broadcast_to(jnp.arange(prompt + steps), (batch, prompt + steps))
    graphdef, params = nnx.split(model)
    runs = {}
    for compact in (False, True):
        forward = jax.jit(lambda p, *a, compact=compact: cached_forward(nnx.merge(graphdef, p), *a, compact=compact))
        caches = empty_cache(model, batch, prompt + steps)
        first = (tokens[:, :prompt], positions[:, :prompt], jnp.ones((batch, prompt), bool))
        caches = forward(params, caches, *first, limits)[1]
        outs = []
        for t in range(steps):
            at = slice(prompt + t, prompt + t + 1)
            logits, caches, spend = forward(params, caches, tokens[:, at], positions[:, at], alive[t][:, None], limits)
            outs.append((logits, spend.ran_NxBxT, spend.reached_NxBxT, spend.experts_NxBxT))
        runs[compact] = outs, caches
    (whole, whole_caches), (compacted, compacted_caches) = runs[False], runs[True]
    ran = np.concatenate([np.asarray(o[1]) for o in whole], -1)
    assert 0 < ran.mean() < 1 and (ran.sum(0) > 0).any() and (ran.sum(0) < len(model.blocks)).any()
    for a, b in zip(whole, compacted, strict=True):
        np.testing.assert_allclose(b[0], a[0], rtol=1e-5, atol=1e-5)
        for x, y in zip(a[1:], b[1:], strict=True):
            np.testing.assert_array_equal(y, x)
    for a, b in zip(jax.tree.leaves(whole_caches), jax.tree.leaves(compacted_caches), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _decoder(cfg_overrides=(), *, exit_bias: float | None = None, seed: int = 0):
    cfg = config_lib.load(
        str(ROOT / "configs/lm.py:tiny"), ["--config.model.depth=4", f"--config.seed={seed}", *cfg_overrides]
    )
    model = LanguageModel(
        vocab=VOCAB_SIZE,
        width=cfg.model.hidden,
        layers=cfg.model.depth,
        heads=cfg.model.num_heads,
        max_length=cfg.data.window,
        exits=cfg.lm.exits,
        confidence=cfg.lm.confidence,
        mod_capacity=cfg.lm.mod_capacity,
        moe_cfg=config_lib.moe_layers(cfg) if cfg.moe.enabled else None,
        rngs=nnx.Rngs(seed),
    )
    graphdef, params = nnx.split(model, nnx.Param)
    if exit_bias is not None:  # adversarial exits: always (+) or never (-) confident
        model = nnx.merge(graphdef, params)
        for unit in model.exit_units:
            unit.kernel[...] = jnp.zeros_like(unit.kernel[...])
            unit.bias[...] = jnp.full_like(unit.bias[...], exit_bias)
        params = nnx.split(model, nnx.Param)[1]
    flops = lm_flops(cfg, PROMPT + NEW, VOCAB_SIZE, exiting=True, decoding=True)
    return Decoder(graphdef, params, flops, prompt_capacity=PROMPT, new_capacity=NEW)


PROMPTS = [np.array([256, 100, 101, 102], np.int32), np.array([256, 40], np.int32), np.arange(250, 258, dtype=np.int32)]


def test_budgets_are_runtime_inputs_one_compilation_for_every_request():
    decoder = _decoder(["--config.lm.exits=true", "--config.moe.enabled=true", "--config.moe.k=2"])
    requests = [
        dict(),
        dict(max_new_tokens=[2, 5, 8], layer_cap=[1, 2, 4], expert_cap=[1, 2, 1]),
        dict(flops_budget=[1e5, 1e6, 1e7], threshold=0.5, temperature=[0.0, 1.0, 0.7], top_p=0.9, seed=[1, 2, 3]),
    ]
    for request in requests:
        out = decoder(PROMPTS, decoder.limits(3, **request))
        assert (np.asarray(out.count_B) >= 1).all()
    decoder([p[:2] for p in PROMPTS], decoder.limits(3, layer_cap=3))  # other prompt lengths too
    assert decoder.traces == 1


@pytest.fixture(scope="module")
def adversarial():
    """A decoder with classifier exits and top-2 experts; each example swaps its parameters in
    (they are an input of the compiled generation, so nothing recompiles)."""
    overrides = ["--config.lm.exits=true", "--config.lm.confidence=classifier", "--config.moe.enabled=true"]
    return _decoder([*overrides, "--config.moe.k=2"])


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 3),
    scale=st.sampled_from([1.0, 30.0, 1000.0]),
    exit_bias=st.sampled_from([50.0, -50.0]),
    caps=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    experts=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    budgets=st.lists(st.floats(1e3, 3e6), min_size=3, max_size=3),
)
def test_caps_and_budgets_hold_for_any_parameters_and_exits(
    adversarial, seed, scale, exit_bias, caps, experts, budgets
):
    decoder = adversarial
    decoder.params = _parameters(decoder, seed, scale, exit_bias)
    limits = decoder.limits(
        3, layer_cap=caps, expert_cap=experts, flops_budget=budgets, threshold=0.5, temperature=1.0, seed=seed
    )
    out = jax.tree.map(np.asarray, decoder(PROMPTS, limits))
    generated = np.arange(NEW)[None, :] < out.count_B[:, None]
    layers, used = np.where(generated, out.layers_BxM, 0), np.where(generated, out.experts_BxM, 0)
    assert (layers <= np.asarray(caps)[:, None]).all() and (layers[generated] >= 1).all()
    assert (used <= layers * np.asarray(experts)[:, None]).all()
    assert (out.flops_BxM[:, 1:].sum(-1) <= np.asarray(budgets, np.float32)).all()
    assert ((out.tokens_BxM >= 0) & (out.tokens_BxM < VOCAB_SIZE)).all()
    assert set(out.stop_B) <= {1, 2, 3}
    if exit_bias > 0:  # always confident: every token leaves at the first exit
        assert (layers[generated] == 1).all()
    else:  # never confident: the prefill's token runs to its cap
        np.testing.assert_array_equal(layers[:, 0], caps)
    assert decoder.traces == 1


def _parameters(decoder, seed, scale, exit_bias):
    """Fresh parameters from `seed`, scaled, with exit units always (+) or never (-) confident."""
    model = nnx.merge(decoder.graphdef, decoder.params)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    fresh = [
        scale * jax.random.normal(k, leaf.shape, leaf.dtype) / np.sqrt(max(leaf.shape[0], 1))
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(nnx.state(model, nnx.Param)), fresh))
    for unit in model.exit_units:
        unit.kernel[...] = jnp.zeros_like(unit.kernel[...])
        unit.bias[...] = jnp.full_like(unit.bias[...], exit_bias)
    return nnx.split(model, nnx.Param)[1]


def test_never_confident_exits_run_every_block_the_cap_allows():
    decoder = _decoder(["--config.lm.exits=true", "--config.lm.confidence=classifier"], exit_bias=-50.0)
    out = decoder(PROMPTS, decoder.limits(3, layer_cap=[1, 3, 4], threshold=0.5))
    layers = np.asarray(out.layers_BxM)
    np.testing.assert_array_equal(layers, np.broadcast_to(np.array([[1], [3], [4]], np.float32), layers.shape))


def test_a_flops_budget_paces_the_generation_and_stops_it_when_spent():
    decoder = _decoder(["--config.lm.exits=true"])
    loose = decoder(PROMPTS, decoder.limits(3))
    per_token = float(np.asarray(loose.flops_BxM)[0, 1])
    cheapest = float(decoder.worst_DxE[0, 0])  # a token capped at one block
    out = decoder(PROMPTS, decoder.limits(3, flops_budget=[2.5 * per_token, 100 * per_token, 0.5 * cheapest]))
    count, stop = np.asarray(out.count_B), [STOP_REASONS[s] for s in np.asarray(out.stop_B)]
    assert stop == ["budget", "max_new_tokens", "budget"]
    assert count[2] == 1  # not even one decode step fits: only the prefill's token
    assert 1 < count[0] < NEW and (np.asarray(out.decode_flops_B()) <= [2.5 * per_token, 1e30, 1e30]).all()
    assert np.asarray(out.layers_BxM)[0, 1 : count[0]].min() < 4  # paced: shallower than unlimited


def test_greedy_sampling_is_the_argmax_and_a_seed_fixes_a_draw():
    logits = jax.random.normal(jax.random.key(0), (4, 50))
    keys = jax.random.split(jax.random.key(1), 4)
    zero, one = jnp.zeros(4), jnp.ones(4)
    np.testing.assert_array_equal(sample(logits, zero, one, keys), logits.argmax(-1))
    np.testing.assert_array_equal(sample(logits, one, jnp.full(4, 1e-6), keys), logits.argmax(-1))  # top-p ~0
    np.testing.assert_array_equal(sample(logits, one, one, keys), sample(logits, one, one, keys))
    draws = {tuple(np.asarray(sample(logits, one, one, jax.random.split(jax.random.key(s), 4)))) for s in range(8)}
    assert len(draws) > 1
    decoder = _decoder()
    a, b = (decoder(PROMPTS, decoder.limits(3, temperature=1.0, seed=7)) for _ in range(2))
    np.testing.assert_array_equal(a.tokens_BxM, b.tokens_BxM)


@pytest.mark.parametrize(
    "request_, message",
    [
        (dict(layer_cap=0), "layer_cap=0 is outside"),
        (dict(max_new_tokens=NEW + 1), "max_new_tokens=9 is outside"),
        (dict(flops_budget=-1.0), "flops_budget=-1.0 is outside"),
        (dict(threshold=float("nan")), "threshold=nan is outside"),
        (dict(top_p=0.0), "top_p=0.0 is outside"),
        (dict(layer_cap=[1, 2]), "layer_cap must be a number or 3 numbers"),
        # checked before the cast to the column's dtype, which would wrap, overflow or truncate
        (dict(seed=-1), "seed=-1 is outside"),
        (dict(seed=2**32), "seed=4294967296 is outside"),
        (dict(max_new_tokens=2**40), "max_new_tokens=1099511627776 is outside"),
        (dict(expert_cap=2**31), "expert_cap=2147483648 is outside"),
        (dict(expert_cap=2), r"expert_cap=2 is outside \[1, 1\]"),  # past the router's k (here 1: no experts)
        (dict(max_new_tokens=2.7), "max_new_tokens must be a whole number, got 2.7"),
        (dict(layer_cap=10**400), r"layer_cap=inf is outside \[1, 4\]"),  # past float64: as far out as can be
        (dict(seed="a"), "seed must be a number"),
    ],
)
def test_out_of_range_limits_are_refused_in_one_line(request_, message):
    decoder = _decoder()
    with pytest.raises(ValueError, match=message):
        decoder.limits(3, **request_)


def test_bad_prompts_are_refused_in_one_line():
    decoder = _decoder()
    limits = decoder.limits(1)
    for prompts, message in [
        ([], "no prompts"),
        ([np.zeros(0, np.int32)], "1 to 8 tokens"),
        ([np.zeros(PROMPT + 1, np.int32)], "1 to 8 tokens"),
        ([np.array([300], np.int32)], "outside \\[0, 258\\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            decoder(prompts, limits)


def test_a_bfloat16_model_decodes_with_the_full_pass_numbers():
    model = _model(exits=True, dtype=jnp.bfloat16)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 256, (2, 12)), jnp.int32)
    full = model(tokens, train=False)
    limits = TokenLimits.full(model, 2)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    caches = empty_cache(model, 2, 12)
    logits, caches, _ = cached_forward(model, caches, tokens[:, :6], positions[:, :6], jnp.ones((2, 6), bool), limits)
    pieces = [logits]
    for t in range(6, 12):
        one = (tokens[:, t : t + 1], positions[:, t : t + 1], jnp.ones((2, 1), bool))
        logits, caches, _ = cached_forward(model, caches, *one, limits)
        pieces.append(logits)
    decoded = jnp.concatenate(pieces, 1).astype(jnp.float32)
    np.testing.assert_allclose(decoded, full.logits_BxLxV.astype(jnp.float32), rtol=0, atol=2e-2)
    assert (decoded.argmax(-1) == full.logits_BxLxV.argmax(-1)).mean() > 0.95


def test_a_run_trained_with_expert_groups_decodes_one_token_at_a_time(tmp_path):
    from adaptive.data.datasets import DatasetSpec
    from adaptive.inference.generate import decoder_for_run
    from adaptive.inference.restore import Run
    from adaptive.nn.models import build_model

    cfg = config_lib.load(str(ROOT / "configs/lm.py:tiny"), ["--config.moe.enabled=true", "--config.moe.num_groups=2"])
    spec = DatasetSpec((cfg.data.window,), VOCAB_SIZE, {}, False, 0, sequence=True)
    graphdef, params = nnx.split(build_model(cfg, spec), nnx.Param)
    run = Run(tmp_path, cfg, spec, graphdef, params, 0)
    decoder = decoder_for_run(run, prompt_capacity=4, new_capacity=3)
    out = decoder([np.array([256, 65], np.int32)], decoder.limits(1))  # one token a step: not 2 groups
    assert int(out.count_B[0]) == 3
