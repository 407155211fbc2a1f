"""`adaptive reproduce`: claims read from an experiment's README, checked against a sweep."""

import json
import subprocess

import pytest

from adaptive.config import ConfigError
from adaptive.experiments.reproduce import check, read_block
from tests.helpers import QUIET, cli

ROWS = [
    {"status": "done", "values": {"halting.tau": 0.001, "seed": 0}, "eval_accuracy": 0.875, "eval_steps": 8.0},
    {"status": "done", "values": {"halting.tau": 0.001, "seed": 1}, "eval_accuracy": 0.625, "eval_steps": 6.0},
    {"status": "done", "values": {"halting.policy": "none", "model.depth": 1}, "eval_accuracy": 0.5, "eval_steps": 1},
    {"status": "failed", "values": {"halting.tau": 0.01}},
]


def test_claims_pool_seeds_and_compare_with_numbers_or_other_points():
    held = check("tau=0.001 : eval_accuracy >= 0.75", ROWS)
    assert held["holds"] and held["got"] == 0.75  # the mean over both seeds
    assert not check("tau=0.001 : eval_accuracy > 0.75", ROWS)["holds"]
    assert check("tau=0.001 : eval_steps > policy=none depth=1 : eval_steps", ROWS)["holds"]
    assert check("halting.tau=0.001 seed=1 : eval_steps < 7", ROWS)["holds"]  # dotted keys, two filters
    missing = check("tau=0.01 : eval_accuracy >= 0.5", ROWS)  # only a failed point matches
    assert not missing["holds"] and "no finished point matches" in missing["why"]
    with pytest.raises(ConfigError, match="cannot read the claim"):
        check("tau=0.001 eval_accuracy is high", ROWS)


def test_every_experiment_block_reads_and_unknown_names_are_refused():
    block = read_block("act_parity")
    assert block["sweep"] == "configs/parity.py" and block["tiny"] == "configs/parity.py:tiny"
    assert block["expect"] and block["tiny-expect"]
    with pytest.raises(ConfigError, match="no experiment 'nope'; experiments/ has act_parity"):
        read_block("nope")


def test_tiny_reproduction_of_act_parity_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        cli("reproduce", "act_parity", "--tiny", "--workdir", str(tmp_path), *QUIET),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert len(claims) == 2 and all(c["holds"] for c in claims)
    assert "HOLDS" in proc.stdout and "FAILS" not in proc.stdout
    table = (tmp_path / "results.md").read_text()
    assert "static depth 1" in table and "ACT tau=0.001" in table and "shifted_accuracy" in table
    for point in ("1-seed0-tau0.001", "2-seed0-tau0.01"):  # adaptive points got the full eval report
        assert (tmp_path / point / "eval" / "test-report-step100.json").exists()
