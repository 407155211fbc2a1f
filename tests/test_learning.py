"""Slow: the built-in configs actually learn (behaviour, not timing)."""

import dataclasses

import pytest

from adaptive import config as config_lib
from adaptive.training.train import train_and_evaluate
from tests.helpers import QUIET, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fully_optimized")]


def _train(spec: str, tmp_path, *overrides: str) -> dict:
    return train_and_evaluate(config_lib.load(f"{ROOT}/{spec}", [*QUIET, *overrides]), tmp_path)


def test_act_solves_parity_and_ponders_longer_on_harder_inputs(tmp_path):
    """The main job's config (8000 steps), judged over three seeds as a claim is, not on one run:
    a seed's trajectory depends on the CPU's float rounding, and on one host seed 0 had not
    converged by step 8000 where seeds 1 and 2 had. Two seeds of three solve parity, and each
    that does ponders longer on harder inputs; none passes the step cap."""
    finals = [_train("configs/parity.py", tmp_path / str(seed), f"--config.seed={seed}") for seed in (0, 1, 2)]
    solved = [final for final in finals if final["eval/accuracy"] >= 0.9]
    assert len(solved) >= 2, [final["eval/accuracy"] for final in finals]
    for final in solved:
        steps = final["eval/steps_by_difficulty"]
        assert steps[16] > steps[1] + 1.0, steps  # more non-zero entries: more pondering
    assert all(final["eval/steps_max"] <= 20 for final in finals)


def test_one_step_static_rnn_stays_near_chance_on_parity(tmp_path):
    final = _train("configs/parity.py:static", tmp_path, "--config.train.steps=3000", "--config.train.eval_every=3000")
    assert final["eval/accuracy"] < 0.6


def test_digits_mlp_learns(tmp_path):
    assert _train("configs/digits.py", tmp_path)["eval/accuracy"] >= 0.9


def test_mnist1d_mlp_beats_chance_by_far(tmp_path):
    cfg = config_lib.load(f"{ROOT}/configs/mnist1d.py", QUIET)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=1500, eval_every=1500))
    assert train_and_evaluate(cfg, tmp_path)["eval/accuracy"] >= 0.4
