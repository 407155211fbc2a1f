"""Throughput (`requests_per_s`) and memory (`memory_mb`) budgets: in training configs, per request
at the engine, and an artifact over its memory budget refused before it serves."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import pytest

from adaptive import config as config_lib
from adaptive.compute.budget import Budget
from adaptive.compute.costmodel import CostModel, Fit, fingerprint
from adaptive.config import ConfigError
from adaptive.inference.artifact_meta import ArtifactError
from adaptive.serving.engine import BudgetError, Engine
from tests.helpers import ROOT

SHAPE = (16,)


def _cfg(tmp_path, **budget):
    cfg = config_lib.load(str(ROOT / "configs/parity.py:tiny"))
    path = tmp_path / "cost_model.json"  # known numbers: a batch of 4 takes 1 + 0.5 * steps ms
    fits = {"b1_k0": Fit(1.0, 0.5, []), "b4_k0": Fit(1.0, 0.5, [])}
    CostModel(fingerprint(cfg, SHAPE), "test", 3.0, 30.0, fits).save(path)
    return dataclasses.replace(
        cfg, budget=dataclasses.replace(cfg.budget, **{"cost_model": str(path), "serving_batch": 4, **budget})
    )


def test_a_throughput_target_is_held_as_serving_ms_per_request(tmp_path):
    # 3 steps: (1 + 1.5) ms per batch of 4 = 0.625 ms a request = 1600 requests/s
    budget = Budget.from_config(_cfg(tmp_path, unit="requests_per_s", target=1600.0), SHAPE, 2)
    assert budget.target == pytest.approx(1000 / 1600) and budget.compute(3.0) == pytest.approx(budget.target)
    assert budget.compute(2.0) < budget.target < budget.compute(4.0)  # fewer steps sustain a higher rate
    # A request asking 2000 requests/s may take 0.5 ms: (1 + 0.5 s) / 4 <= 0.5 -> 2 steps.
    capped = Budget.from_config(_cfg(tmp_path, unit="requests_per_s", requests=(2000.0, 1000.0)), SHAPE, 2)
    assert capped.request_steps == (2, 6)
    for bad, said in ((1e9, "sustains"), (0.0, "positive")):
        with pytest.raises(ConfigError, match=said):
            Budget.from_config(_cfg(tmp_path, unit="requests_per_s", target=bad), SHAPE, 2)
    with pytest.raises(ConfigError, match="cost_model"):
        Budget.from_config(_cfg(tmp_path, unit="requests_per_s", target=1600.0, cost_model=""), SHAPE, 2)
    # Reports show the held value under its own unit, the stated rate beside it.
    from adaptive.evaluation.report import compute_columns

    assert budget.held_unit == "ms_per_request"
    columns = compute_columns(_cfg(tmp_path, unit="requests_per_s", target=1600.0), {"eval/steps_mean": 3.0})
    assert columns["budget"] == "0.625 ms_per_request (1600 requests_per_s)"
    assert columns["realized"] == pytest.approx(0.625) and columns["deviation_pct"] == pytest.approx(0.0, abs=1e-9)


def test_a_two_sided_throughput_near_the_highest_rate_is_warned_of_in_requests_per_s(tmp_path, caplog):
    """The floor of a throughput target is its highest rate: the warning states the rate asked
    and the rates this model sustains, and points to a lower one (not to 'a higher target')."""
    for rate, warned in ((2500.0, True), (1600.0, False)):  # 1 step sustains 2667 requests/s
        cfg = _cfg(tmp_path, unit="requests_per_s", target=rate, penalty="lagrangian", two_sided=True)
        caplog.clear()
        Budget.from_config(cfg, SHAPE, 2).check_trainable(cfg)
        said = [r.getMessage() for r in caplog.records if r.name == "adaptive.compute.budget"]
        assert bool(said) == warned, (rate, said)
        if warned:
            assert "budget.target 2500 requests_per_s" in said[0] and "2666.67 requests/s" in said[0], said
            assert "a lower rate" in said[0] and "higher" not in said[0]


def test_a_memory_budget_steers_no_training_and_refuses_what_it_cannot_mean(tmp_path):
    assert Budget.from_config(_cfg(tmp_path, unit="memory_mb", target=8.0), SHAPE, 2) is None
    for budget, said in ((dict(target=-1.0), "positive"), (dict(target=8.0, requests=(4.0,)), "one ceiling")):
        with pytest.raises(ConfigError, match=said):
            Budget.from_config(_cfg(tmp_path, unit="memory_mb", **budget), SHAPE, 2)
    lm = config_lib.load(f"{ROOT}/configs/lm.py:tiny", ["--config.budget.unit=memory_mb", "--config.budget.target=1"])
    said = "which a language model's training does not take; exported with --precision or --prune, its meta.json"
    with pytest.raises(ConfigError, match=said):
        Budget.from_config(lm, (32,), 256)


def _engine(meta: dict) -> Engine:
    def serve(x, budget):
        steps = jnp.clip(budget, 1, 6)
        return jnp.zeros(x.shape[0], jnp.int32), jnp.ones(x.shape[0]), steps, jnp.zeros(x.shape[0], jnp.int32)

    table = {"steps": [1, 2, 3, 4, 5, 6], "flops": [10, 20, 30, 40, 50, 60]}
    table["latency_ms"] = [1.0 + 0.5 * s for s in table["steps"]]
    table["latency_ms_p99"] = [2.0 + 0.5 * s for s in table["steps"]]
    return Engine(serve, SHAPE, 6, table, buckets=(1,), meta=meta)


def test_the_engine_prices_rates_and_memory_per_request():
    engine = _engine({"budget": {"serving_batch": 4}, "memory": {"batch": 4, "total_mb": 2.5}})
    assert engine.steps_for(2000.0, "requests_per_s") == 2  # 2 ms a batch of 4
    assert engine.steps_for(1e-310, "requests_per_s") == engine.cap  # its ms per batch past float64: any time
    assert engine.within_budget(2, 2000.0, "requests_per_s") and not engine.within_budget(3, 2000.0, "requests_per_s")
    said = (
        r"budget 4000 requests_per_s is above what this model sustains at one step \(2666.67 requests_per_s at batch 4"
    )
    with pytest.raises(BudgetError, match=said):
        engine.steps_for(4000.0, "requests_per_s")  # 1 ms a batch: not even one step
    assert engine.steps_for(3.0, "memory_mb") == 6 and engine.within_budget(6, 3.0, "memory_mb")
    with pytest.raises(BudgetError, match="below this model's 2.5 MB"):
        engine.steps_for(2.0, "memory_mb")
    assert engine.steps_within(2.0, "memory_mb") == 0  # refused before it runs
    # a latency budget is each request's ceiling: priced at the p99 (2.5 ms a step), not the mean (1.5)
    assert engine.steps_for(3.0, "latency_ms") == 2
    with pytest.raises(BudgetError, match=r"below one step of this model \(2.5 latency_ms at the cost model's p99\)"):
        engine.steps_for(2.0, "latency_ms")
    bare = _engine({})
    with pytest.raises(BudgetError, match="memory"):
        bare.steps_for(3.0, "memory_mb")


def test_an_artifact_over_its_memory_budget_is_not_served(tmp_path, monkeypatch):
    from adaptive.serving import engine as engine_module

    meta = {"memory_budget_mb": 1.0, "memory": {"batch": 1, "total_mb": 1.5}}
    monkeypatch.setattr("adaptive.inference.export.load_artifact", lambda path, **kw: (None, meta))
    with pytest.raises(ArtifactError, match="over its memory budget of 1 MB"):
        engine_module.Engine.from_artifact(tmp_path)
    # a fallback rung over the budget is named as one, with the flag that would pick another
    meta["operating_points"] = [{"precision": "int8", "prune": 0.5, "fits": True}]
    monkeypatch.setattr("adaptive.serving.point_meta.point_meta", lambda meta, point, path: meta)
    with pytest.raises(
        ArtifactError,
        match=r"\(--fallback-point fp32,0.25\) needs 1.5 MB at batch 1, over its memory budget of 1 MB; nothing "
        r"served \(serve a point that fits: --fallback-point int8,0.5\)$",
    ):
        engine_module.Engine.from_artifact(tmp_path, point=("fp32", 0.25), flag="--fallback-point")
    json.dumps(meta)  # the fields are plain JSON, as meta.json holds them


def test_bench_serve_says_whether_the_sustained_rate_met_a_throughput_budget(capsys):
    from adaptive.bench.serve import throughput_verdict

    rows = [{"policy": "adaptive", "pattern": "poisson", "goodput_rps": 120.0}, {"goodput_rps": 80.0}]
    marked = throughput_verdict([dict(r) for r in rows], 100.0, rate=150.0)
    assert [r["throughput_met"] for r in marked] == [True, False]
    assert all(r["throughput_budget_rps"] == 100.0 for r in marked)
    low = throughput_verdict([dict(r) for r in rows], 100.0, rate=50.0)  # too little offered to show it
    assert not any(r["throughput_met"] for r in low) and "below the throughput budget" in capsys.readouterr().out


def test_a_request_cap_in_flops_holds_at_what_inference_runs():
    """With capacity dispatch, inference (dropless, every expert over every token) costs a step
    about 3x what training's capacity does: a FLOPs cap priced at training's would let a request
    run past it."""
    from adaptive.compute.flops import flops_model

    overrides = ["--config.halting.policy=act", "--config.halting.max_steps=4", "--config.model.share_weights=true"]
    overrides += ["--config.moe.dispatch=capacity", "--config.budget.unit=flops", "--config.budget.requests=[6e5]"]
    cfg = config_lib.load(f"{ROOT}/configs/moe.py", overrides)
    (steps,) = Budget.from_config(cfg, (40,), 10).request_steps
    served = flops_model(cfg, (40,), 10, batch=cfg.budget.serving_batch)
    assert served.at_steps(steps) <= 6e5 < served.at_steps(steps + 1)
    trained = flops_model(cfg, (40,), 10, batch=cfg.train.batch_size, train=True)
    assert trained.at_steps(steps + 1) < 6e5  # training's pricing would have allowed a step more


@pytest.mark.parametrize("router, steers", [("top_k", False), ("top_p", True)])
def test_expected_compute_keeps_the_experts_share_of_a_step_in_halting_s_gradient(router, steers):
    """A top-k count is a constant: taken into expected compute it would subtract the experts'
    FLOPs from what a step costs in the gradient that reaches halting. Only top-p's is taken."""
    import jax

    overrides = ["--config.model.kind=mlp", "--config.halting.policy=act", "--config.moe.enabled=true"]
    overrides += [f"--config.moe.router={router}", f"--config.moe.renormalize={router == 'top_k'}"]
    overrides += ["--config.budget.unit=flops", "--config.budget.target=1e6"]
    cfg = config_lib.load(f"{ROOT}/configs/parity.py", overrides)
    budget = Budget.from_config(cfg, SHAPE, 2)
    assert budget.routes_experts == steers
    per_step = jax.grad(lambda ponder: budget.compute(ponder, None))(3.0)
    assert per_step == pytest.approx(budget.flops.per_step + budget.flops.halting_per_step)
    assert budget.flops.experts_per_step * budget.flops.expert_pass > 0.5 * budget.flops.per_step  # most of a step
