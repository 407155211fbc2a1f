"""The causal language model: causality in every variant, exits, Mixture-of-Depths, experts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn.lm import LanguageModel
from tests.helpers import ROOT

LENGTH, VOCAB = 12, 258


def _model(**kw) -> LanguageModel:
    return LanguageModel(vocab=VOCAB, width=32, layers=4, heads=4, max_length=LENGTH, rngs=nnx.Rngs(0), **kw)


def _moe_cfg():
    cfg = config_lib.load(
        str(ROOT / "configs/parity.py"),
        ["--config.model.kind=mlp", "--config.moe.enabled=true", "--config.moe.num_experts=4", "--config.moe.k=2"],
    )
    return config_lib.moe_layers(cfg)


VARIANTS = {
    "plain": (dict(), dict()),
    "learned positions": (dict(positions="learned"), dict()),
    # "median": a threshold that sends about half the tokens out at the first exit
    "exits, state propagation": (dict(exits=True), dict(exit_threshold="median")),
    "exits, margin": (dict(exits=True, confidence="margin"), dict(exit_threshold="median")),
    "exits, saturation": (dict(exits=True, confidence="state_saturation"), dict(exit_threshold="median")),
    "exits, classifier": (dict(exits=True, confidence="classifier"), dict(exit_threshold="median")),
    "mod, causal routing": (dict(mod_capacity=0.25), dict(mod_causal=True)),
    "experts": ("moe", dict()),
    "act per position": (dict(act=True, act_bias_init=0.0), dict()),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_change_at_position_t_never_changes_outputs_before_t(variant):
    kwargs, call = VARIANTS[variant]
    model = _model(moe_cfg=_moe_cfg()) if kwargs == "moe" else _model(**kwargs)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, (3, LENGTH)).astype(np.int32)
    if call.get("exit_threshold") == "median":
        scores = model(jnp.asarray(tokens), train=False).exit_scores_ExBxL[0]
        call = {**call, "exit_threshold": float(jnp.median(scores))}
    base = model(jnp.asarray(tokens), train=False, **call)
    if "exit_threshold" in call:  # some tokens leave early and some do not: propagation is exercised
        assert (base.layers_BxL == 1).any() and (base.layers_BxL > 1).any()
    for t in (0, 5, LENGTH - 1):
        changed = tokens.copy()
        changed[:, t] = (changed[:, t] + 1 + rng.integers(0, 200, 3)) % 256
        out = model(jnp.asarray(changed), train=False, **call)
        np.testing.assert_array_equal(out.logits_BxLxV[:, :t], base.logits_BxLxV[:, :t])
        np.testing.assert_array_equal(out.layers_BxL[:, :t], base.layers_BxL[:, :t])
        if t < LENGTH - 1:  # the changed token itself, or what follows, sees it
            assert not np.array_equal(out.logits_BxLxV[:, t:], base.logits_BxLxV[:, t:])


def test_a_token_leaves_at_its_first_confident_exit_and_its_state_stops_changing():
    model = _model(exits=True)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, LENGTH)), jnp.int32)
    full = model(tokens, train=False)
    scores = np.asarray(full.exit_scores_ExBxL)
    threshold = float(np.median(scores[0]))  # about half the tokens leave at the first exit
    out = model(tokens, train=False, exit_threshold=threshold)
    layers = np.asarray(out.layers_BxL)
    assert set(np.unique(layers)) <= {1.0, 2.0, 3.0, 4.0} and (layers == 1).any() and (layers > 1).any()
    first = scores[0] >= threshold
    np.testing.assert_array_equal(layers == 1, first)
    # a token that leaves at the first exit answers with that exit's prediction: the first exit
    # reads a state no propagation has touched yet, so it equals the full pass's
    np.testing.assert_allclose(
        np.asarray(out.logits_BxLxV)[first], np.asarray(full.exit_logits_ExBxLxV[0])[first], rtol=1e-6, atol=1e-6
    )
    # a threshold above every confidence runs every block for every token: the full pass (to
    # rounding: with exits each block sits in a conditional that skips it once every token has left)
    never = model(tokens, train=False, exit_threshold=2.0)
    np.testing.assert_allclose(never.logits_BxLxV, full.logits_BxLxV, rtol=1e-5, atol=1e-5)
    assert (np.asarray(never.layers_BxL) == 4).all()


def test_mod_runs_the_block_on_the_top_capacity_share_of_each_sequence():
    model = _model(mod_capacity=0.25)  # blocks 1 and 3 are MoD blocks
    assert model.mod_layers == (1, 3)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, LENGTH)), jnp.int32)
    out = model(tokens, train=True)
    picked = int(np.ceil(0.25 * LENGTH))
    np.testing.assert_allclose(np.asarray(out.layers_BxL).sum(-1), 2 * LENGTH + 2 * picked)
    assert float(out.metrics["mod/selected_1"]) == pytest.approx(picked / LENGTH)
    # the gathered block really runs on `picked` tokens: its attention is picked x picked
    text = jax.jit(lambda m, x: m(x, train=True).logits_BxLxV).lower(model, tokens).as_text()
    assert f"tensor<2x4x{picked}x{picked}xf32>" in text
    assert float(out.aux_loss) > 0  # the causal predictor's loss


def test_the_router_and_the_predictor_both_learn():
    model = _model(mod_capacity=0.25)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 256, (2, LENGTH)), jnp.int32)

    def loss(m):
        out = m(tokens, train=True)
        return out.logits_BxLxV.mean() ** 2 + out.aux_loss

    grads = nnx.grad(loss)(model)
    router = grads.routers["1"]
    assert float(jnp.abs(router.weight.kernel.value).sum()) > 0  # the block's update is scaled by it
    assert float(jnp.abs(router.predictor_out.kernel.value).sum()) > 0


@pytest.mark.parametrize("bias, steps", [(-50.0, 4), (50.0, 1), (0.0, None)])
def test_act_halts_each_position_within_the_cap_whatever_the_halting_unit_says(bias, steps):
    model = _model(act=True)
    model.halt_unit.bias.value = jnp.full_like(model.halt_unit.bias.value, bias)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 256, (3, LENGTH)), jnp.int32)
    for train in (True, False):
        out = model(tokens, train=train)
        layers = np.asarray(out.layers_BxL)
        assert ((layers >= 1) & (layers <= 4)).all()
        if steps is not None:  # never halting still stops at the cap; always halting runs one step
            assert (layers == steps).all()
        # N + R: the steps run plus the remainder, between N and N + 1
        ponder = np.asarray(out.ponder_BxL)
        assert (ponder >= layers - 1e-5).all() and (ponder <= layers + 1 + 1e-5).all()
    # a position's steps are counted block by block: it ran steps 1..N
    np.testing.assert_array_equal(np.asarray(out.ran_NxBxL).sum(0), layers)
    assert (np.diff(np.asarray(out.ran_NxBxL), axis=0) <= 0).all()


def test_bad_settings_are_refused_with_the_name_of_what_is_wrong():
    with pytest.raises(ValueError, match="confidence"):
        _model(exits=True, confidence="entropy")
    with pytest.raises(ValueError, match="mod_capacity"):
        _model(mod_capacity=1.5)
    with pytest.raises(ValueError, match="act"):
        _model(act=True, exits=True)
    with pytest.raises(ValueError, match="num_heads"):
        LanguageModel(vocab=VOCAB, width=30, layers=1, heads=4, max_length=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="longer than the learned positions"):
        _model(positions="learned")(jnp.zeros((1, LENGTH + 1), jnp.int32))


def test_bf16_matmuls_keep_the_outputs_close():
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 256, (2, LENGTH)), jnp.int32)
    full = _model()(tokens, train=False).logits_BxLxV
    half = _model(dtype=jnp.bfloat16)(tokens, train=False).logits_BxLxV
    assert half.dtype == jnp.float32 or half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.1)
