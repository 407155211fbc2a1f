"""The reproduce blocks of every experiment with one (the language-model ones too): every
full claim selects what the block plans before anything runs, every tiny claim fails on a run
made to fail, and (slow) each `adaptive reproduce NAME --tiny` runs end to end with its tiny
claims holding."""

import json
import shlex
import subprocess

import pytest

from adaptive.experiments import claims
from adaptive.experiments.reproduce import RUN_SEEDS, _plan_sweep, read_block
from tests.helpers import QUIET, cli

EXPERIMENTS = (
    "budget_targeting",
    "moe_vs_dense",
    "pondernet_parity",
    "serving",
    "serving_lm",
    "early_exit_lm",
    "lm_budget",
    "mixture_of_depths",
    "moe_lm",
    "calm_guarantee",
)
# The language-model experiments' tiny claims, each made to fail by a value it excludes: no
# compute saved, nothing spent, the wrong number of steps, a dense model priced as the MoE, a
# guarantee that never held, a server that answered nothing on time.
FAILING_VALUES = {
    "early_exit_lm": {"blocks_ratio": 1.5},
    "lm_budget": {"ratio": 0.0},
    "mixture_of_depths": {"train_flops_ratio": 2.0},
    "moe_lm": {"forward_flops_ratio": 3.0},
    "calm_guarantee": {"held": 0.0},
    "serving_lm": {"violation_rate": 1.0},
}


def _values(filters: str) -> dict:
    return dict(word.split("=", 1) for word in shlex.split(filters))


@pytest.mark.parametrize("tiny", [False, True], ids=["full", "tiny"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_claim_selects_planned_points_or_a_run_of_its_block(name, tiny, tmp_path):
    """A typo in a filter would select nothing and fail only after hours of training: each side
    of each claim must select planned sweep points (>= 3 seeds for a full claim, checked as
    `adaptive reproduce` does) or name a run line of the same block."""
    block = read_block(name)
    sweeps, runs = block["tiny" if tiny else "sweep"], block["tiny-run" if tiny else "run"]
    plans = [_plan_sweep(s, extra, tmp_path, i if len(sweeps) > 1 else None) for i, (s, extra) in enumerate(sweeps)]
    planned = [row for _, _, rows in plans for row in rows]
    planned += [{"values": {"run": n}, "seed": s} for n, c in runs if "{seed}" in c for s in RUN_SEEDS[tiny]]
    expected = block["tiny-expect" if tiny else "expect"]
    assert expected
    for claim in expected:
        claims.check_design(claim, planned, 1 if tiny else claims.MIN_SEEDS)
        assert claim.source, claim.text
        for side in (claim.left, claim.right):
            if isinstance(side, claims.Side) and not claims.select(planned, side.filters):
                assert _values(side.filters).get("run") in {n for n, _ in runs}, f"{claim.text}: selects nothing"


def _failing_runs(name: str, tiny_claims: list) -> list[list[dict]]:
    """Runs made to fail each experiment's tiny claims, as result rows (one seed)."""

    def row(filters: str, **metrics) -> dict:
        return {"status": "done", "seed": 0, "values": {**_values(filters), "seed": 0}, **metrics}

    if name == "budget_targeting":  # a budget that does not reach the model: all at the cap, or all at 1 step
        targets = {"tiny-budget25": 4978.0, "tiny-budget75": 14934.0}
        return [
            [row(f"name={n}", test_flops=flops, target_flops=t) for n, t in targets.items()] for flops in (19912, 3300)
        ]
    if name == "moe_vs_dense":  # a collapsed router, both models at chance
        collapsed = {"test_accuracy": 0.1, "train_usage_entropy": 0.0, "train_drop_fraction": 0.5}
        return [[row(f"name={n}", **collapsed) for n in ("mnist1d-moe", "mnist1d-dense")]]
    if name == "pondernet_parity":  # a run that cannot ponder: every model, and the sampled eval, at 1 step
        rows = [row(f"halting.policy={p}", test_steps=1.0, test_accuracy=0.5) for p in ("pondernet", "act", "none")]
        return [[*rows, row("run=sample split=test halting=sample", **{"eval/steps_mean": 1.0})]]
    if name in FAILING_VALUES:
        return [[row(c.left.filters, **FAILING_VALUES[name]) for c in tiny_claims]]
    # serving: no policy answered anything on time
    return [[row(c.left.filters, sla_violation_rate=1.0, effective_accuracy=0.0) for c in tiny_claims]]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_tiny_claim_fails_on_a_run_made_to_fail(name):
    tiny = read_block(name)["tiny-expect"]
    runs = _failing_runs(name, tiny)
    for claim in tiny:
        assert any(not claims.judge(claim, rows, 1)["holds"] for rows in runs), claim.text
        for rows in runs:  # each verdict is a judgement on these rows, not a missing column
            assert "why" not in claims.judge(claim, rows, 1), claim.text


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_tiny_reproduction_runs_end_to_end_and_its_claims_hold(name, tmp_path):
    proc = subprocess.run(
        cli("reproduce", name, "--tiny", "--workdir", str(tmp_path), *QUIET),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdicts = json.loads((tmp_path / "claims.json").read_text())
    assert len(verdicts) == len(read_block(name)["tiny-expect"]) and all(c["holds"] for c in verdicts)
    table = (tmp_path / "results.md").read_text()
    if name == "budget_targeting":
        assert "| test_flops |" in table and "| target_flops |" in table
    elif name == "moe_vs_dense":
        assert "| train_usage_entropy |" in table and "| train_drop_fraction |" in table
    elif name == "pondernet_parity":
        sampled = json.loads((tmp_path / "sample-seed0.json").read_text())
        assert sampled["halting"] == "sample" and sampled["split"] == "test"
    elif name == "serving":
        rows = json.loads((tmp_path / "serving.json").read_text())
        assert len(rows) == 7 * 4 and {r["seed"] for r in rows} == {0}  # 7 policies x 4 patterns, one run
    elif name == "serving_lm":
        rows = json.loads((tmp_path / "serving-lm.json").read_text())
        assert len(rows) == 5 * 3 and {r["seed"] for r in rows} == {0}  # 5 policies x 3 patterns, one run
        assert all(r["threshold"] > 0 for r in rows if r["policy"] == "fixed threshold")
    else:  # the language-model experiments: each tiny run wrote its rows
        for run_name, _ in read_block(name)["tiny-run"]:
            assert json.loads((tmp_path / f"{run_name}.json").read_text()), run_name
