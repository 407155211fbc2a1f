"""Budgets: validation, penalties that push toward the target from both sides, dual ascent."""

import dataclasses
import subprocess

import jax
import jax.numpy as jnp
import pytest

from adaptive import config as config_lib
from adaptive.compute.budget import Budget
from adaptive.compute.flops import flops_model
from adaptive.config import ConfigError
from adaptive.training.metrics import read_jsonl
from adaptive.training.train import train_and_evaluate
from tests.helpers import QUIET, ROOT, train_command

SHAPE, CLASSES = (16,), 2


def _budget(*overrides):
    cfg = config_lib.load(f"{ROOT}/configs/parity.py", list(overrides))
    return cfg, Budget.from_config(cfg, SHAPE, CLASSES)


def test_no_target_means_no_budget():
    assert _budget()[1] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.budget.target=0"], "'budget.target' is 0.0; a budget must be positive"),
        (["--config.budget.target=-2"], "'budget.target' is -2.0; a budget must be positive"),
        (["--config.budget.target=21"], "'budget.target' is 21 steps; this model spends 1 to 20 steps per example"),
        (["--config.budget.unit=flops", "--config.budget.target=10"], "this model spends"),
        (["--config.budget.unit=joules", "--config.budget.target=1"], "allowed values: 'steps', 'flops', 'macs'"),
    ],
)
def test_invalid_budgets_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        _budget(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_units_follow_the_flops_model():
    cfg, budget = _budget("--config.budget.unit=macs", "--config.budget.target=100000")
    model = flops_model(cfg, SHAPE, CLASSES, batch=cfg.train.batch_size, train=True)
    assert budget.compute(7.0) == pytest.approx(model.at_steps(7.0) / 2)


@pytest.mark.parametrize("penalty", ["lagrangian", "hinge"])
def test_penalty_gradients_point_toward_the_target(penalty):
    _, budget = _budget("--config.budget.target=8", f"--config.budget.penalty={penalty}")
    grad = jax.grad(lambda c, lam: budget.penalty_term(c, lam))
    over, under = jnp.full((4,), 12.0), jnp.full((4,), 4.0)
    assert float(grad(over, 0.0).sum()) > 0  # descending lowers compute that is over budget
    if penalty == "lagrangian":  # two-sided: raises compute that is under budget
        assert float(grad(under, 0.0).sum()) < 0
        assert float(grad(under, -1.0).sum()) < float(grad(under, 0.0).sum())
    else:  # a hinge leaves compute under budget alone
        assert float(grad(under, 0.0).sum()) == 0


def test_dual_ascent_moves_the_multiplier_with_the_gap():
    _, budget = _budget("--config.budget.target=8")
    assert float(budget.dual_step(0.0, jnp.array([12.0]))) > 0
    assert float(budget.dual_step(0.0, jnp.array([4.0]))) < 0
    assert float(budget.dual_step(0.3, jnp.array([8.0]))) == pytest.approx(0.3)


def test_training_lands_realized_compute_on_the_target(tmp_path):
    """A small ACT run with no ponder cost and a budget of 3 steps (cap 6): dual ascent settles
    the realized mean steps within 10% of the target."""
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py:tiny", [*QUIET, "--config.budget.target=3", "--config.halting.tau=0"]
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=600, log_every=50, eval_every=600))
    final = train_and_evaluate(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert rows[-1]["budget/target"] == 3.0
    assert rows[-1]["budget/realized_compute"] == pytest.approx(3.0, rel=0.10)
    assert final["eval/steps_mean"] == pytest.approx(3.0, rel=0.10)


def test_cli_refuses_an_unreachable_budget_before_creating_the_workdir(tmp_path):
    proc = subprocess.run(
        train_command(tmp_path / "w", "--config.budget.target=50"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "adaptive: error: config key 'budget.target' is 50 steps; this model spends 1 to 6 steps per example"
    ]
    assert not (tmp_path / "w").exists()


def test_request_budgets_become_step_caps_and_a_distribution():
    _, budget = _budget("--config.budget.requests=2,4.5", "--config.budget.request_weights=3,1")
    assert budget.target is None and budget.request_steps == (2, 4) and budget.request_probs == (0.75, 0.25)
    draws = jax.device_get(budget.sample_steps(jax.random.key(0), 4000))
    assert set(draws.tolist()) == {2, 4} and (draws == 2).mean() == pytest.approx(0.75, abs=0.03)
    cfg, flops = _budget("--config.budget.unit=flops", "--config.budget.target=300000")
    at = flops.compute  # a FLOPs request caps steps at the most whose FLOPs fit
    _, budget = _budget("--config.budget.unit=flops", f"--config.budget.requests={float(at(3.5))}")
    assert budget.request_steps == (3,) and budget.request_probs == (1.0,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.budget.requests=0.5"], "'budget.requests' holds 0.5 steps; a request needs 1 to 20"),
        (["--config.budget.requests=3,30"], "'budget.requests' holds 30 steps"),
        (["--config.budget.requests=3,4", "--config.budget.request_weights=1"], "give one weight >= 0 per request (2)"),
        (["--config.budget.requests=3", "--config.budget.request_weights=0"], "not all 0"),
        (["--config.budget.requests=3,x"], "'budget.requests[1]' must be float"),
        (
            ["--config.budget.requests=3", "--config.halting.policy=none"],
            "'budget.requests' needs an adaptive model; halting.policy is 'none'",
        ),
    ],
)
def test_bad_request_budgets_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        _budget(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_training_and_evaluation_under_request_budgets_respect_each_cap(tmp_path):
    """Trained with caps of 2 or 4 steps drawn per example (3:1), the model never runs past a
    request's cap in training or evaluation, and `adaptive eval` scores it under the same draws."""
    from adaptive.evaluation.budgeted_eval import evaluate_run

    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py:tiny",
        [*QUIET, "--config.budget.requests=2,4", "--config.budget.request_weights=3,1", "--config.halting.tau=0"],
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=40, log_every=20, eval_every=40))
    final = train_and_evaluate(cfg, tmp_path)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    # no ponder cost: every example runs to its cap, 2 or 4, so the mean is 0.75 * 2 + 0.25 * 4
    assert rows[-1]["train/steps_mean"] == pytest.approx(2.5, abs=0.25)
    assert final["eval/steps_max"] <= 4 and 2.0 <= final["eval/steps_mean"] <= 3.0
    metrics, _ = evaluate_run(tmp_path)
    assert metrics["budget"] == "requests" and metrics["request_step_caps"] == {"2": 0.75, "4": 0.25}
    assert metrics["eval/steps_mean"] == final["eval/steps_mean"]  # the same draws
    at_cap, _ = evaluate_run(tmp_path, budget=6)
    assert at_cap["eval/steps_mean"] > final["eval/steps_mean"]
