"""`adaptive report` over runs that differ only by seed: mean and 95% interval per group."""

import pytest

from adaptive import config as config_lib
from adaptive.evaluation.report import _without_seed, seed_summary
from tests.helpers import ROOT

SPEC = str(ROOT / "configs/parity.py:tiny")


def run_row(seed, accuracy, steps, method="ACT tau=0.003"):
    return {"run": f"r{seed}", "method": method, "kind": "rnn", "seed": seed, "validation_accuracy": accuracy,
            "validation_steps": steps, "test_accuracy": accuracy - 0.01, "eval_flops": 1000.0}  # fmt: skip


def test_runs_group_by_everything_but_the_seed():
    keys = {
        name: _without_seed(config_lib.load(SPEC, overrides))
        for name, overrides in {
            "seed0": ["--config.seed=0"],
            "seed1": ["--config.seed=1"],
            "renamed": ["--config.seed=2", "--config.name=other"],
            "quiet": ["--config.seed=3", "--config.logging.progress=false"],  # as a sweep trains its points
            "tau": ["--config.seed=0", "--config.halting.tau=0.01"],
        }.items()
    }
    assert keys["seed0"] == keys["seed1"] == keys["renamed"] == keys["quiet"] != keys["tau"]


def test_a_group_of_seeds_shows_its_mean_and_95_percent_interval():
    rows = [run_row(0, 0.96, 8.0), run_row(1, 0.98, 9.0), run_row(2, 0.97, 7.0), run_row(0, 0.5, 1.0, "static")]
    summary = seed_summary(rows, [[0, 1, 2], [3]])
    act, static = summary
    assert act["method"] == "ACT tau=0.003" and act["seeds"] == 3
    assert act["validation_accuracy"] == pytest.approx(0.97) and act["test_accuracy"] == pytest.approx(0.96)
    assert act["validation_steps"] == pytest.approx(8.0)
    # t(0.975, 2) = 4.303; sd 0.01 (accuracy) and 1.0 (steps) over 3 seeds
    assert act["validation_accuracy_ci95"] == f"+-{4.3027 * 0.01 / 3**0.5:.3g}"
    assert act["validation_steps_ci95"] == f"+-{4.3027 / 3**0.5:.3g}"
    assert act["eval_flops"] == pytest.approx(1000.0)  # FLOPs too; the run's name and seed are not averaged
    assert "run" not in act and "seed" not in act
    assert static["seeds"] == 1 and static["validation_accuracy_ci95"] == "n/a (1 seed)"


def test_a_language_models_row_names_its_exits_and_mod_blocks():
    from adaptive.evaluation.report import describe

    lm = str(ROOT / "configs/lm.py:tiny")
    plain = describe(config_lib.load(lm, []))["method"]
    exits = describe(config_lib.load(lm, ["--config.lm.exits=true"]))["method"]
    mod = describe(config_lib.load(lm, ["--config.lm.mod_capacity=0.25"]))["method"]
    assert plain.startswith("static depth") and exits.endswith("exits max_prob>=0.9")
    assert "MoD 0.25 every 2" in mod and "static" not in exits + mod
