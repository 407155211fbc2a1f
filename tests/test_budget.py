"""Budgets: validation, penalties that push toward the target from both sides, dual ascent."""

import dataclasses
import subprocess

import jax
import jax.numpy as jnp
import pytest

from adaptive import config as config_lib
from adaptive.budget import Budget
from adaptive.config import ConfigError
from adaptive.flops import flops_model
from adaptive.metrics import read_jsonl
from adaptive.train import train_and_evaluate
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
