"""Weight quantization: int4 packing, error bounds, every model kind, integers kept in the compiled
program, calibration on validation data only, and `adaptive bench quant`."""

from __future__ import annotations

import json
import re
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.memory import memory_report
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.evaluation.quantization import quantized
from adaptive.inference.export import serving_function
from adaptive.inference.infer import budgeted_infer
from adaptive.inference.restore import load_run
from adaptive.nn.lm_decode import TokenLimits, cached_forward, empty_cache
from adaptive.nn.models import build_model
from adaptive.nn.moe import MoEFeedForward
from adaptive.nn.quantize import QLinear, quantize_model, weight_bytes
from adaptive.nn.qweight import QWeight, _pack, _unpack
from tests.helpers import ROOT, cli, train_tiny
from tests.test_lm import _model


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 5), seed=st.integers(0, 1000))
def test_int4_packing_round_trips_every_value_and_halves_the_bytes(rows, cols, seed):
    q = jnp.asarray(np.random.RandomState(seed).randint(-7, 8, (rows, cols)), jnp.int8)
    for axis in (0, 1):
        packed = _pack(q, axis)
        assert packed.dtype == jnp.uint8 and packed.shape[axis] == (q.shape[axis] + 1) // 2
        np.testing.assert_array_equal(_unpack(packed, axis, q.shape[axis]), q)


@pytest.mark.parametrize("precision,levels", [("int8", 127), ("int4", 7)])
def test_each_weight_is_within_half_a_step_of_its_channel_scale(precision, levels):
    w = jnp.asarray(np.random.RandomState(0).standard_normal((33, 6)) * np.arange(1, 7), jnp.float32)
    w = w.at[:, 2].set(0.0)  # an all-zero channel gets scale 1, not a division by zero
    q = QWeight(w, precision, axis=0)
    step = np.abs(np.asarray(w)).max(0) / levels
    error = np.abs(np.asarray(q[...]) - np.asarray(w))
    assert (error <= step / 2 + 1e-6).all() and np.isfinite(np.asarray(q[...])).all()
    assert q.values[...].dtype == (jnp.uint8 if precision == "int4" else jnp.int8)


def _model_of(config: str, *overrides: str):
    cfg = config_lib.load(str(ROOT / config), list(overrides))
    spec = data.prepare(cfg.data)
    return cfg, spec, nnx.split(build_model(cfg, spec), nnx.Param)


UNSHARED = "--config.model.share_weights=false"  # a layer per step, stacked on a leading axis


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("configs/mnist1d.py:tiny", ()),
        ("configs/sut.py:tiny", ()),
        ("configs/parity.py:tiny", ()),
        ("configs/mnist1d.py:tiny", (UNSHARED,)),
        ("configs/mnist1d.py:tiny", (UNSHARED, "--config.model.kind=transformer")),
        ("configs/moe.py:tiny", ()),  # unshared MoE blocks: stacked experts
    ],
    ids=["mnist1d", "sut", "parity", "stacked mlp", "stacked transformer", "stacked experts"],
)
def test_every_classifier_kind_answers_close_to_fp32_with_fewer_weight_bytes(config, overrides, tmp_path):
    cfg, spec, (graphdef, params) = _model_of(config, f"--config.data.data_dir={tmp_path}", *overrides)
    x = jnp.asarray(np.random.RandomState(0).standard_normal((16, *spec.input_shape)), jnp.float32)
    budget = jnp.full((16,), 100, jnp.int32)
    ref = jax.jit(budgeted_infer(graphdef, None))(params, x, budget).logits_BxC
    scale = float(jnp.abs(ref).max())
    sizes = {}
    for precision, tolerance in (("bf16", 0.02), ("int8", 0.05), ("int4", 0.5)):
        g, p = quantize_model(graphdef, params, precision)
        out = jax.jit(budgeted_infer(g, None))(p, x, budget).logits_BxC
        assert float(jnp.abs(out - ref).max()) <= tolerance * scale, precision
        sizes[precision] = weight_bytes(p)
    assert weight_bytes(params) > sizes["bf16"] > sizes["int8"] > sizes["int4"]
    if cfg.moe.enabled:  # the router decides compute: it stays float32
        model = nnx.merge(*quantize_model(graphdef, params, "int8"))
        routers = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear)]
        assert routers and all(r.kernel[...].dtype == jnp.float32 for r in routers)
        assert not any(isinstance(m, nnx.Linear) and m.kernel[...].shape[-1] > 8 for _, m in nnx.iter_graph(model))
        assert not any(isinstance(m, nnx.LinearGeneral) for _, m in nnx.iter_graph(model))  # attention too


def test_stacked_layers_get_a_scale_per_layer_and_training_rounds_as_export_does(tmp_path):
    """Layers stacked on a leading axis (one per step) are quantized one by one: the reduced axis
    is counted from the end, so slicing a step's layer out keeps it, and quantization-aware
    training rounds each weight to exactly what the exported model holds."""
    from adaptive.nn.quantize import fake_quantizer

    cfg, _, (graphdef, params) = _model_of(
        "configs/mnist1d.py:tiny", f"--config.data.data_dir={tmp_path}", UNSHARED, "--config.model.kind=transformer"
    )
    for precision in ("int8", "int4"):
        exported = nnx.merge(*quantize_model(graphdef, params, precision))
        stacked = [w for _, w in nnx.iter_graph(exported) if isinstance(w, QWeight) and len(w.shape) == 3]
        assert stacked and all(w.scale[...].shape == (w.shape[0], 1, w.shape[2]) for w in stacked)
        rounded = nnx.merge(graphdef, fake_quantizer(graphdef, precision)(params))
        for path, weight in nnx.iter_graph(exported):
            if isinstance(weight, QWeight) and len(weight.shape) == 3:
                trained = rounded
                for key in path[:-1]:
                    trained = trained[key] if isinstance(key, int) else getattr(trained, key)
                float_weight = getattr(trained, path[-1])[...].reshape(weight.shape)
                np.testing.assert_allclose(weight[...], float_weight, rtol=1e-6, atol=1e-7)


def test_the_language_model_quantizes_embeddings_and_blocks_and_still_predicts():
    graphdef, params = nnx.split(_model(exits=True), nnx.Param)
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, VOCAB_SIZE, (2, 12)), jnp.int32)
    forward = lambda g, p: nnx.merge(g, p)(tokens, train=False).logits_BxLxV  # noqa: E731
    ref = forward(graphdef, params)
    g, p = quantize_model(graphdef, params, "int8")
    model = nnx.merge(g, p)
    assert isinstance(model.blocks[0].attention.qkv, QLinear)
    assert model.embed.embedding.values[...].dtype == jnp.int8
    out = forward(g, p)
    assert float(jnp.abs(out - ref).max()) <= 0.05 * float(jnp.abs(ref).max())
    # Decoding projects only some columns of a quantized layer: the same numbers as the full pass.
    limits = TokenLimits.full(model, 2)._replace(threshold_B=jnp.full((2,), 2.0))
    step = jax.jit(lambda p, *args: cached_forward(nnx.merge(g, p), *args))
    caches, positions = empty_cache(model, 2, 12), jnp.broadcast_to(jnp.arange(12), (2, 12))
    pieces = []
    for t in range(12):
        token = (tokens[:, t : t + 1], positions[:, t : t + 1], jnp.ones((2, 1), bool))
        logits, caches, _ = step(p, caches, *token, limits)
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), out, rtol=2e-5, atol=2e-5)


def test_compiled_inference_keeps_integer_weights_and_allocates_less():
    """XLA would fold convert(int8 constant) back into a float32 constant: the barrier stops it."""
    cfg, spec, (graphdef, params) = _model_of("configs/mnist1d.py", "--config.model.hidden=256")
    for batch in (1, 16):  # one row is a case of its own for XLA:CPU (qweight._matmul)
        x, budget = jnp.ones((batch, *spec.input_shape), jnp.float32), jnp.ones((batch,), jnp.int32)
        reports = {}
        for precision in ("fp32", "int8"):
            g, p = quantize_model(graphdef, params, precision)
            compiled = jax.jit(serving_function(g, p)).lower(x, budget).compile()
            reports[precision] = memory_report(compiled, weight_bytes(p))
            found = re.findall(r"([sf]\d+)\[(\d+),(\d+)\]\{1,0\} constant", compiled.as_text())
            constants = [kind for kind, rows, cols in found if min(int(rows), int(cols)) > 1]  # matrices
            if precision == "int8":  # every matrix is an int8 constant, none a float32 one
                assert constants.count("s8") >= 4 and "f32" not in constants
        assert reports["int8"]["total"] < 0.5 * reports["fp32"]["total"], batch
        assert reports["int8"]["temporaries"] < weight_bytes(params) / 10, batch  # no float32 copy of the weights


@pytest.mark.parametrize("dispatch", ["blocks", "capacity", "ragged"])
def test_quantized_experts_multiply_in_their_precision_and_hold_no_float_copy(dispatch):
    """Each dispatch path of a quantized MoE layer gives the float answer of its dequantized
    weights up to its inputs' rounding (so the product ran in the layer's precision), and an int8
    layer compiles with no float32 copy of its experts: at 16 tokens, and at one token routed to
    one expert (a single row, which XLA:CPU would multiply by converting the whole weight)."""
    for tokens, k in ((16, 2), (1, 1)):  # one token, one expert: a single row in every path but blocks
        layer = MoEFeedForward(64, 256, 8, k=k, dispatch=dispatch, block_size=8, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(layer, nnx.Param)
        float_experts = params["w_in"][...].nbytes + params["w_out"][...].nbytes
        x = jnp.asarray(np.random.RandomState(tokens).standard_normal((tokens, 64)), jnp.float32)

        def forward(g, x=x):
            return jax.jit(lambda state: nnx.merge(g, state)(x, train=False).y_TxD)

        float_temporaries = forward(graphdef).lower(params).compile().memory_analysis().temp_size_in_bytes
        for precision, tolerance in (("bf16", 0.02), ("int8", 0.03), ("int4", 0.05)):
            g, p = quantize_model(graphdef, params, precision)
            dequantized = nnx.clone(nnx.merge(graphdef, params))  # float32 experts, the quantized values
            dequantized.w_in[...], dequantized.w_out[...] = nnx.merge(g, p).w_in[...], nnx.merge(g, p).w_out[...]
            ref = forward(graphdef)(nnx.state(dequantized, nnx.Param))
            run = forward(g)
            error, scale = float(jnp.abs(run(p) - ref).max()), float(jnp.abs(ref).max())
            assert 1e-5 * scale < error <= tolerance * scale, (precision, tokens, error / scale)
            if precision == "int8":  # a dequantized copy of the experts would add float_experts / 2 or more
                temporaries = run.lower(p).compile().memory_analysis().temp_size_in_bytes
                assert temporaries < float_temporaries + float_experts / 4, (tokens, temporaries)


def test_integer_matmul_of_an_all_zero_input_row_is_finite():
    layer = QLinear(nnx.Linear(8, 4, rngs=nnx.Rngs(0)), "int8")
    y = layer(jnp.zeros((3, 8)))
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_allclose(y, jnp.broadcast_to(layer.bias[...], (3, 4)), atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    train_tiny(root / "run", 20, overrides=(f"--config.data.data_dir={root / 'data'}",))
    return root / "run"


def test_calibration_keeps_the_clip_that_scores_best_on_validation_and_refuses_test(trained):
    run = load_run(trained)
    variant = quantized(run, "int4", limit=128)
    assert len(variant.candidates) > 1
    assert variant.score["accuracy"] == max(c["accuracy"] for c in variant.candidates)
    assert variant.clip in [c["clip"] for c in variant.candidates if c["accuracy"] == variant.score["accuracy"]]
    with pytest.raises(ValueError, match="test split"):
        quantized(run, "int8", split="test")


def test_bench_quant_writes_a_row_per_variant_and_batch(trained, tmp_path):
    out = tmp_path / "quant.json"
    command = cli("bench", "quant", "--workdir", str(trained), "--precisions", "fp32,int8", "--batches", "1,4")
    flags = ["--repeats", "2", "--limit", "64", "--json", str(out)]
    proc = subprocess.run([*command, *flags], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["batch"]) for r in rows] == [("fp32", 1), ("int8", 1), ("fp32", 4), ("int8", 4)]
    fp32, int8 = rows[2], rows[3]
    assert fp32["ratio"] == 1.0 and int8["weight_bytes"] < fp32["weight_bytes"] / 2
    assert {"ms", "accuracy", "memory_mb", "clip"} <= set(int8)
    bad = subprocess.run([*command[:-4], "--precisions", "int3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "int3" in bad.stderr and "Traceback" not in bad.stderr
