"""Analytic FLOPs against XLA's cost_analysis() of the same compiled function, for every halting
policy and model kind: within 2% for dense models (a head counted once too often is 1-2% of a
small one), within 10% with experts.

Experts run here with capacity buffers at a fixed eval capacity: XLA's cost analysis counts a
loop body once and a conditional's branches as it likes, so the default block dispatch (a loop
over blocks that skips the unused ones) has its executed rows checked by
tests/test_block_dispatch.py instead."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.compute.flops import flops_model
from adaptive.nn.models import build_model
from tests.helpers import ROOT

CAPACITY = ["--config.moe.dispatch=capacity", "--config.moe.eval_dropless=false"]
KINDS = [
    ("rnn", []),
    ("mlp", []),
    ("transformer", []),
    ("mlp", ["--config.moe.enabled=true", *CAPACITY]),
    ("transformer", ["--config.moe.enabled=true", *CAPACITY]),
]


def _tolerance(extra: list[str]) -> float:
    return 0.10 if extra else 0.02


class Spec:
    input_shape, num_classes = (16,), 2


def _config(kind: str, policy: str, steps: int, hidden: int, extra: list[str]):
    return config_lib.load(
        f"{ROOT}/configs/parity.py",
        [
            f"--config.model.kind={kind}",
            f"--config.halting.policy={policy}",
            f"--config.model.depth={steps}",
            f"--config.halting.max_steps={steps}",
            f"--config.model.hidden={hidden}",
            *extra,
        ],
    )


def _xla_flops(fn, params, batch: int) -> float:
    analysis = jax.jit(fn).lower(params, jnp.ones((batch, 16))).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"] / batch


@pytest.mark.parametrize("kind, extra", KINDS)
@pytest.mark.parametrize("depth", [1, 4])
def test_static_inference_matches_cost_analysis(kind, extra, depth):
    cfg = _config(kind, "none", depth, 64, extra)
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    xla = _xla_flops(lambda p, x: nnx.merge(graphdef, p).infer(x, jnp.int32(depth)).logits_BxC, params, 32)
    analytic = flops_model(cfg, Spec.input_shape, Spec.num_classes, batch=32).at_steps(depth)
    assert analytic == pytest.approx(xla, rel=_tolerance(extra))


@pytest.mark.parametrize("kind, extra", KINDS)
@pytest.mark.parametrize("policy", ["none", "act", "pondernet", "early_exit"])
def test_the_training_forward_at_the_cap_matches_cost_analysis(policy, kind, extra, monkeypatch):
    """Every step up to the cap runs in the training forward pass (a scan over the cap for the
    adaptive policies, weighted by the policy). XLA's cost analysis counts a loop body once
    whatever its trip count, so the scan is unrolled here: the same ops, once per step."""
    scan = jax.lax.scan
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **kw: scan(*a, **{**kw, "unroll": True}))
    cap, batch = 3, 16
    cfg = _config(kind, policy, cap, 32, extra)
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    xla = _xla_flops(lambda p, x: nnx.merge(graphdef, p)(x), params, batch)
    analytic = flops_model(cfg, Spec.input_shape, Spec.num_classes, batch=batch, train=True).at_steps(cap)
    assert analytic == pytest.approx(xla, rel=_tolerance(extra))


@pytest.mark.parametrize("dispatch", ["blocks", "capacity"])
def test_a_smaller_expert_budget_is_priced_at_the_experts_it_runs(dispatch):
    """Block dispatch computes the kept assignments: top-2 held to 1 expert a token costs half the
    expert work; capacity buffers run whole whatever the budget."""
    overrides = ["--config.model.kind=mlp", "--config.moe.enabled=true", "--config.moe.k=2"]
    cfg = config_lib.load(f"{ROOT}/configs/parity.py", [*overrides, f"--config.moe.dispatch={dispatch}"])
    flops = flops_model(cfg, (16,), 2, batch=8)
    two, one = flops.at_steps(3.0, 3 * 2.0), flops.at_steps(3.0, 3 * 1.0)
    assert two == flops.at_steps(3.0)  # k applications a step: the default
    if dispatch == "blocks":
        assert two - one == pytest.approx(3 * flops.expert_pass)
        # the same as the model routed to one expert a token (what an export prices a budget of 1
        # at): its combine of expert outputs included, not only the expert itself
        from adaptive.inference.export import at_expert_budget

        assert one == pytest.approx(flops_model(at_expert_budget(cfg, 1), (16,), 2, batch=8).at_steps(3.0))
    else:
        assert one == two


def test_expert_choice_at_inference_is_priced_at_its_cap_of_k_where_dispatch_follows_routing():
    """Inference caps each token at k experts; block dispatch runs only what is kept, so the price
    is k a token however many slots the experts have (capacity buffers run whole). Training is
    uncapped: every slot an expert fills."""
    base = [
        "--config.model.kind=mlp",
        "--config.moe.enabled=true",
        "--config.moe.k=2",
        "--config.moe.router=expert_choice",
    ]
    for dispatch in ("blocks", "capacity"):
        cfg = config_lib.load(f"{ROOT}/configs/parity.py", [*base, f"--config.moe.dispatch={dispatch}"])
        served, trained = flops_model(cfg, (16,), 2, batch=1), flops_model(cfg, (16,), 2, batch=1, train=True)
        assert trained.experts_per_step == cfg.moe.num_experts  # a batch of one: every expert's slot takes it
        assert served.experts_per_step == (2 if dispatch == "blocks" else cfg.moe.num_experts)
        assert served.counted_experts == (dispatch == "blocks")
