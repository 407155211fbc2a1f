"""Analytic FLOPs against XLA's cost_analysis() of the compiled inference function (within 10%)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.compute.flops import flops_model
from adaptive.nn.models import build_model
from tests.helpers import ROOT


class Spec:
    input_shape, num_classes = (16,), 2


def _xla_flops(cfg, batch: int, budget: int) -> float:
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    fn = jax.jit(lambda p, x: nnx.merge(graphdef, p).infer(x, jnp.int32(budget)).logits_BxC)
    analysis = fn.lower(params, jnp.ones((batch, 16))).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"] / batch


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("rnn", []),
        ("mlp", []),
        ("transformer", []),
        ("mlp", ["--config.moe.enabled=true"]),
        ("transformer", ["--config.moe.enabled=true"]),
    ],
)
@pytest.mark.parametrize("depth", [1, 4])
def test_static_models_match_cost_analysis(kind, extra, depth):
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py",
        [
            f"--config.model.kind={kind}",
            "--config.halting.policy=none",
            f"--config.model.depth={depth}",
            "--config.model.hidden=64",
            *extra,
        ],
    )
    analytic = flops_model(cfg, Spec.input_shape, Spec.num_classes, batch=32).at_steps(depth)
    assert analytic == pytest.approx(_xla_flops(cfg, 32, depth), rel=0.10)
