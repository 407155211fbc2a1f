"""Structured pruning: removed units are exactly masked units, XLA runs the smaller shapes, expert
scores come from validation routing, and the fine-tunes (after pruning, quantization-aware) train."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive import data
from adaptive.evaluation.pruning import expert_scores, flops_of, pruned
from adaptive.inference.export import serving_function
from adaptive.inference.generate import decoder_for_run
from adaptive.inference.infer import budgeted_infer
from adaptive.inference.restore import Run, load_run
from adaptive.nn.lm_blocks import CausalAttention
from adaptive.nn.lm_decode import TokenLimits, cached_forward, empty_cache
from adaptive.nn.models import build_model
from adaptive.nn.prune import (
    attention_layers,
    feed_forward_blocks,
    head_scores,
    kept,
    moe_layers,
    prune_model,
    unit_scores,
)
from adaptive.nn.quantize import QWeight, fake_quantizer
from adaptive.training.fine_tune import fine_tune
from tests.helpers import ROOT, train_tiny
from tests.test_lm import _model as _lm_model


def test_kept_drops_the_lowest_scores_and_keeps_at_least_the_floor():
    assert kept([5, 1, 4, 2], 0.5).tolist() == [0, 2]
    assert kept([5, 1, 4, 2], 0.9).tolist() == [0]
    assert kept([5, 1, 4, 2], 0.9, least=2).tolist() == [0, 2]
    assert kept([3, 3, 3], 0.0).tolist() == [0, 1, 2]


def _built(config: str, tmp_path, *overrides: str):
    cfg = config_lib.load(str(ROOT / config), [f"--config.data.data_dir={tmp_path}", *overrides])
    spec = data.prepare(cfg.data)
    return cfg, spec, nnx.split(build_model(cfg, spec), nnx.Param)


def _kept_mask(scores, fraction: float) -> np.ndarray:
    """True where `kept` keeps (a row per stacked layer)."""
    mask = np.zeros(np.shape(scores), bool)
    np.put_along_axis(mask, kept(scores, fraction), True, axis=-1)
    return mask


def _masked(graphdef, params, fraction: float):
    """The model with the units and heads `prune_model` would remove zeroed instead (in each of
    stacked layers, its own)."""
    masked = nnx.merge(graphdef, params)
    for block in feed_forward_blocks(masked):
        keep = _kept_mask(unit_scores(block), fraction)  # [(layers,) hidden]
        block.up.kernel[...] = block.up.kernel[...] * keep[..., None, :]
        block.up.bias[...] = block.up.bias[...] * keep
        block.down.kernel[...] = block.down.kernel[...] * keep[..., :, None]
    for layer in attention_layers(masked):
        keep = _kept_mask(head_scores(layer), fraction)  # [(layers,) heads]
        if isinstance(layer, CausalAttention):
            drop = np.flatnonzero(~keep)
            qkv = layer.qkv.kernel[...].reshape(-1, 3, layer.heads, layer.head_width)
            layer.qkv.kernel[...] = qkv.at[:, :, drop].set(0.0).reshape(qkv.shape[0], -1)
            out = layer.out.kernel[...].reshape(layer.heads, layer.head_width, -1)
            layer.out.kernel[...] = out.at[drop].set(0.0).reshape(-1, out.shape[-1])
            continue
        for name in ("query", "key", "value"):  # kernels [(layers,) D, H, K], biases [(layers,) H, K]
            projection = getattr(layer, name)
            projection.kernel[...] = projection.kernel[...] * keep[..., None, :, None]
            projection.bias[...] = projection.bias[...] * keep[..., :, None]
        layer.out.kernel[...] = layer.out.kernel[...] * keep[..., :, None, None]
    return nnx.split(masked, nnx.Param)


def test_a_model_with_nothing_to_prune_is_refused_rather_than_reported_as_pruned(tmp_path):
    """The recurrent cell of configs/parity.py has no feed-forward units, heads or experts: a
    "pruned" variant would be the model itself under a smaller variant's name."""
    from adaptive.nn.prune import NothingToPrune

    _, _, (graphdef, params) = _built("configs/parity.py:tiny", tmp_path)
    assert prune_model(graphdef, params, 0.0) == (graphdef, params)  # no pruning asked: nothing to refuse
    with pytest.raises(NothingToPrune, match="no feed-forward units, attention heads or experts to remove"):
        prune_model(graphdef, params, 0.5)


UNSHARED = "--config.model.share_weights=false"  # a layer per step, stacked on a leading axis


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("configs/mnist1d.py:tiny", ()),
        ("configs/sut.py:tiny", ()),
        ("configs/mnist1d.py:tiny", (UNSHARED,)),
        ("configs/mnist1d.py:tiny", (UNSHARED, "--config.model.kind=transformer")),
    ],
    ids=["mlp", "transformer", "stacked mlp", "stacked transformer"],
)
def test_a_pruned_model_answers_as_the_original_with_those_units_zeroed(config, overrides, tmp_path):
    """Removing unit j of relu/gelu(x @ up + b) @ down is the same as zeroing its column, bias and
    row, and removing a head the same as zeroing its query, key, value and output weights (its
    values are 0, so is what it adds): pruning cuts exactly what it says it cuts, nothing else,
    in each of stacked layers its own."""
    cfg, spec, (graphdef, params) = _built(config, tmp_path, "--config.moe.enabled=false", *overrides)
    graphdef_p, params_p = prune_model(graphdef, params, 0.5)
    graphdef_m, params_m = _masked(graphdef, params, 0.5)
    x = jnp.asarray(np.random.RandomState(0).standard_normal((8, *spec.input_shape)), jnp.float32)
    budget = jnp.full((8,), 3, jnp.int32)
    want = jax.jit(budgeted_infer(graphdef_m, None))(params_m, x, budget).logits_BxC
    got = jax.jit(budgeted_infer(graphdef_p, None))(params_p, x, budget).logits_BxC
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    widths = [b.up.kernel[...].shape[-1] for b in feed_forward_blocks(nnx.merge(graphdef_p, params_p))]
    assert widths and all(w == cfg.model.hidden for w in widths)  # 2 x hidden halved
    for block in feed_forward_blocks(nnx.merge(graphdef, params)):  # each stacked layer ranked on its own
        up, down = np.asarray(block.up.kernel[...]), np.asarray(block.down.kernel[...])
        if up.ndim == 3:
            alone = [np.linalg.norm(up[i], axis=0) * np.linalg.norm(down[i], axis=1) for i in range(len(up))]
            np.testing.assert_array_equal(kept(unit_scores(block), 0.5), [kept(a, 0.5) for a in alone])
            assert len({tuple(k) for k in kept(unit_scores(block), 0.5)}) > 1  # the layers keep different units


def test_a_pruned_language_model_is_the_masked_one_and_decodes_as_its_full_pass():
    graphdef, params = nnx.split(_lm_model(), nnx.Param)
    graphdef_p, params_p = prune_model(graphdef, params, 0.5)
    pruned_model = nnx.merge(graphdef_p, params_p)
    assert [a.heads for a in attention_layers(pruned_model)] == [2] * 4
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 256, (2, 12)), jnp.int32)
    want = nnx.merge(*_masked(graphdef, params, 0.5))(tokens, train=False).logits_BxLxV
    got = pruned_model(tokens, train=False).logits_BxLxV
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    limits = TokenLimits.full(pruned_model, 2)
    caches, positions = empty_cache(pruned_model, 2, 12), jnp.broadcast_to(jnp.arange(12), (2, 12))
    logits, _, _ = cached_forward(pruned_model, caches, tokens, positions, jnp.ones((2, 12), bool), limits)
    np.testing.assert_allclose(logits, got, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "config,overrides",
    [
        ("configs/mnist1d.py", ("--config.model.hidden=64",)),
        ("configs/mnist1d.py", ("--config.model.hidden=64", UNSHARED)),  # stacked: the widths read per layer
        (
            "configs/sut.py:tiny",
            ("--config.moe.enabled=false", "--config.halting.policy=none", "--config.model.hidden=32"),
        ),
    ],
)
def test_xla_runs_the_pruned_shapes_and_the_analytic_flops_follow_them(config, overrides, tmp_path):
    cfg, spec, (graphdef, params) = _built(config, tmp_path, *overrides)
    x, budget = jnp.ones((1, *spec.input_shape), jnp.float32), jnp.ones((1,), jnp.int32)
    run = Run(tmp_path, cfg, spec, graphdef, params, 0)
    counted = {}
    for fraction in (0.0, 0.5):
        g, p = prune_model(graphdef, params, fraction)
        compiled = jax.jit(serving_function(g, p)).lower(x, budget).compile()
        counted[fraction] = (
            compiled.cost_analysis()["flops"],
            flops_of(dataclasses.replace(run, graphdef=g, params=p)),
        )
    for xla, analytic in counted.values():
        assert abs(analytic - xla) <= 0.1 * xla
    assert counted[0.5][0] < 0.75 * counted[0.0][0]  # the compiled program does less work


@pytest.fixture(scope="module")
def sut(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-sut")
    train_tiny(root / "run", 10, config="configs/sut.py:tiny", overrides=(f"--config.data.data_dir={root / 'd'}",))
    return load_run(root / "run")


def test_experts_of_a_block_per_step_are_refused_before_any_point_is_computed(tmp_path):
    """A classifier's routing metrics are means over steps: with a MoE block per step they rank
    no block's experts. Refused in one line before export or bench quant computes a point."""
    from adaptive.config import ConfigError
    from adaptive.evaluation.pruning import check_prunable

    cfg, spec, (graphdef, params) = _built("configs/moe.py:tiny", tmp_path)
    with pytest.raises(ConfigError, match=r"this model has 2 \(model.share_weights=false\): prune it with --prune 0"):
        check_prunable(Run(tmp_path, cfg, spec, graphdef, params, 0), 0.5)
    cfg, spec, (graphdef, params) = _built("configs/parity.py:tiny", tmp_path)  # nothing to prune: said as such
    with pytest.raises(ValueError, match="pruning 0.25: this model has no feed-forward units, attention heads or"):
        check_prunable(Run(tmp_path, cfg, spec, graphdef, params, 0), 0.25)


def test_expert_scores_are_validation_load_plus_gate_mass_and_pruning_keeps_k(sut):
    (scores,) = expert_scores(sut, limit=256)
    assert scores.shape == (sut.cfg.moe.num_experts,) and np.isclose(scores.sum(), 2.0, atol=1e-3)
    variant = pruned(sut, 0.75, fine_tune_steps=2, limit=128)
    (layer,) = moe_layers(nnx.merge(variant.run.graphdef, variant.run.params))
    assert layer.num_experts == sut.cfg.moe.k  # 4 experts minus 3 would leave fewer than k = 2
    assert layer.router.kernel[...].shape[-1] == layer.w_in[...].shape[0] == sut.cfg.moe.k
    assert variant.prune == 0.75 and [c["fine_tune_steps"] for c in variant.candidates] == [0, 2]
    assert flops_of(variant.run) < flops_of(sut)
    with pytest.raises(ValueError, match="test split"):
        pruned(sut, 0.5, split="test")


def test_fake_quantization_forwards_quantized_weights_and_passes_gradients_straight_through(sut):
    transform = fake_quantizer(sut.graphdef, "int4")
    forward = transform(sut.params)
    model = nnx.merge(sut.graphdef, forward)
    (layer,), (original,) = moe_layers(model), moe_layers(nnx.merge(sut.graphdef, sut.params))
    np.testing.assert_allclose(layer.w_in[...], QWeight(original.w_in[...], "int4", axis=-2)[...], rtol=1e-6)
    assert not np.allclose(layer.w_in[...], original.w_in[...])
    grads = jax.grad(lambda p: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(transform(p))))(sut.params)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_allclose(leaf, np.ones_like(leaf))


def test_fine_tune_trains_a_copy_and_leaves_the_callers_parameters_alone(sut):
    before = jax.tree.map(np.asarray, sut.params)
    tuned = fine_tune(sut.cfg, sut.spec, sut.graphdef, sut.params, 3, transform=fake_quantizer(sut.graphdef, "int8"))
    after = jax.tree.map(np.asarray, sut.params)  # still readable: the donated state was a copy
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(before), strict=True))


def test_a_language_models_experts_are_scored_and_pruned_block_by_block(tmp_path):
    train_tiny(tmp_path / "run", 3, config="configs/lm.py:tiny", overrides=("--config.moe.enabled=true",))
    run = load_run(tmp_path / "run", language_model=True)
    rows = [r for r in data_rows(tmp_path / "run") if "moe/expert_usage_by_layer" in r]
    experts, blocks = run.cfg.moe.num_experts, len(moe_layers(nnx.merge(run.graphdef, run.params)))
    assert len(rows[-1]["moe/expert_usage"]) == experts  # averaged over blocks expert by expert
    assert np.array(rows[-1]["moe/expert_usage_by_layer"]).shape == (blocks, experts)
    scores = expert_scores(run)  # as `pruned` reads them
    assert len(scores) == blocks >= 2 and all(np.isclose(s.sum(), 2.0, atol=1e-3) for s in scores)
    assert not np.allclose(scores[0], scores[1])  # each block's own routing, not a shared score
    variant = pruned(run, 0.5, fine_tune_steps=0, limit=32)
    before = moe_layers(nnx.merge(run.graphdef, run.params))
    after = moe_layers(nnx.merge(variant.run.graphdef, variant.run.params))
    for layer, old, layer_scores in zip(after, before, scores, strict=True):
        keep = kept(layer_scores, 0.5, least=run.cfg.moe.k)
        assert layer.num_experts == experts // 2 == len(keep)
        np.testing.assert_array_equal(layer.router.kernel[...], old.router.kernel[...][:, keep])  # the best stay
    assert flops_of(variant.run) < flops_of(run)
    worst = [decoder_for_run(r, prompt_capacity=8, new_capacity=8).worst_DxE[-1, -1] for r in (run, variant.run)]
    assert worst[1] < worst[0]  # a pruned model's decoder prices its tokens at the shapes it runs


@pytest.mark.slow
def test_an_act_language_models_shared_block_gets_one_score_per_expert_over_its_steps(tmp_path):
    act = ("--config.halting.policy=act", "--config.halting.max_steps=3", "--config.moe.enabled=true")
    train_tiny(tmp_path / "run", 2, config="configs/lm.py:tiny", overrides=act)
    run = load_run(tmp_path / "run", language_model=True)
    assert len(moe_layers(nnx.merge(run.graphdef, run.params))) == 1
    (scores,) = expert_scores(run, limit=32)  # a row per step, averaged: one layer's scores
    assert scores.shape == (run.cfg.moe.num_experts,) and np.isclose(scores.sum(), 2.0, atol=1e-3)


def data_rows(workdir):
    import json

    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
