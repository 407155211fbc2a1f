"""The language model's analytic FLOPs per token against XLA's cost_analysis() (within 10%)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.compute.lm_flops import lm_flops
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.nn.models import build_model
from tests.helpers import ROOT

LENGTH, BATCH = 32, 4
CAPACITY = ["--config.moe.dispatch=capacity", "--config.moe.dropless=false"]


class Spec:
    input_shape, num_classes, sequence = (LENGTH,), VOCAB_SIZE, True


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--config.lm.positions=learned"],
        ["--config.lm.exits=true"],
        ["--config.lm.exits=true", "--config.lm.confidence=classifier"],
        ["--config.lm.mod_capacity=0.25"],
        ["--config.moe.enabled=true", "--config.moe.num_experts=4", "--config.moe.k=2", *CAPACITY],
        ["--config.moe.enabled=true", "--config.moe.router=top_p", "--config.moe.renormalize=false", *CAPACITY],
        ["--config.lm.exits=true", "--config.lm.mod_capacity=0.25"],
    ],
    ids=[
        "plain",
        "learned positions",
        "exits",
        "exit classifier",
        "mod",
        "experts",
        "top-p",
        "mod+exits",
    ],
)
def test_training_forward_flops_per_token_match_cost_analysis(extra):
    cfg = config_lib.load(
        str(ROOT / "configs/lm.py:tiny"),
        ["--config.model.hidden=64", "--config.model.depth=4", f"--config.data.window={LENGTH}", *extra],
    )
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    tokens = jnp.zeros((BATCH, LENGTH), jnp.int32)
    # everything training reads, so that XLA keeps the exits' heads and the MoD predictor
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x, train=True)._replace(metrics=None))
    analysis = forward.lower(params, tokens).compile().cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"] / (BATCH * LENGTH)
    analytic = lm_flops(cfg, LENGTH, VOCAB_SIZE, batch=BATCH, train=True).full()
    assert analytic == pytest.approx(xla, rel=0.10)


def test_a_token_that_exits_early_costs_less():
    cfg = config_lib.load(str(ROOT / "configs/lm.py:tiny"), ["--config.model.depth=4", "--config.lm.exits=true"])
    flops = lm_flops(cfg, LENGTH, VOCAB_SIZE, exiting=True)
    costs = [flops.at_blocks(b) for b in (1, 2, 3, 4)]
    assert costs == sorted(costs) and costs[0] < costs[-1] == flops.full()
