"""`adaptive reproduce`: blocks read from an experiment's README, claims judged over seeds."""

import json
import shutil
import subprocess
import sys

import pytest

from adaptive.config import ConfigError
from adaptive.experiments import claims, held_out
from adaptive.experiments.reproduce import parse_block, read_block, run_block
from tests.helpers import QUIET, cli


def row(seed, acc, steps, **values):
    return {
        "status": "done",
        "seed": seed,
        "values": {**values, "seed": seed},
        "test_accuracy": acc,
        "test_steps": steps,
    }


ROWS = [
    row(0, 0.96, 8.0, **{"halting.tau": 0.003}),
    row(1, 0.98, 9.0, **{"halting.tau": 0.003}),
    row(2, 0.97, 7.0, **{"halting.tau": 0.003}),
    row(0, 0.50, 1.0, **{"halting.policy": "none", "model.depth": 1}),
    row(1, 0.52, 1.0, **{"halting.policy": "none", "model.depth": 1}),
    row(2, 0.51, 1.0, **{"halting.policy": "none", "model.depth": 1}),
    {"status": "failed", "seed": 0, "values": {"halting.tau": 0.01}},
]


def judge(text, rows=ROWS, minimum=3):
    return claims.judge(claims.parse(text), rows, minimum)


def test_a_claim_against_a_number_holds_when_its_whole_interval_does():
    held = judge("tau=0.003 : test_accuracy >= 0.9  # fixed before the run")
    assert held["holds"] and held["mean"] == pytest.approx(0.97) and held["seeds"] == 3
    low, high = held["interval"]  # t(0.975, 2) = 4.303, sd 0.01: half-width 0.0248
    assert low == pytest.approx(0.97 - 4.3027 * 0.01 / 3**0.5, abs=1e-4) and high > 0.97
    assert held["rule"] == "t over 3 seeds" and held["source"] == "fixed before the run"
    mean_above_but_interval_not = judge("tau=0.003 : test_accuracy >= 0.96  # fixed before the run")
    assert not mean_above_but_interval_not["holds"]  # mean 0.97, low end 0.945
    assert judge("policy=none depth=1 : test_accuracy <= 0.6  # Graves 2016")["holds"]  # high end vs the bar
    assert not judge("policy=none depth=1 : test_accuracy <= 0.52  # Graves 2016")["holds"]


def test_a_comparison_is_judged_on_the_paired_per_seed_difference():
    held = judge("tau=0.003 : test_accuracy > policy=none depth=1 : test_accuracy")
    assert held["holds"] and held["difference"] == pytest.approx(0.46) and held["rule"] == "paired t over 3 seeds"
    assert held["mean"] == pytest.approx(0.97) and held["against"] == pytest.approx(0.51)
    noisy = [row(s, 0.0, steps, tau=1) for s, steps in enumerate((15.8, 9.7, 1.4))]
    noisy += [row(s, 0.0, 0.0, tau=2) for s in range(3)]
    verdict = judge("tau=1 : test_steps > tau=2 : test_steps", noisy)
    assert not verdict["holds"] and verdict["interval"][0] < 0 < verdict["difference"]  # spans 0


def test_one_seed_is_judged_on_its_point_estimate_and_says_so():
    one = [r for r in ROWS if r["seed"] == 0]
    verdict = judge("tau=0.003 : test_accuracy >= 0.95  # fixed before the run", one, minimum=1)
    assert verdict["holds"] and verdict["interval"] is None and verdict["seeds"] == 1
    line = claims.verdict_line(verdict)
    assert "HOLDS" in line and "n/a (1 seed)" in line and "bar: fixed before the run" in line
    too_few = judge("tau=0.003 : test_accuracy >= 0.95  # fixed", one, minimum=3)
    assert not too_few["holds"] and "1 finished seed(s)" in too_few["why"]
    missing = judge("tau=0.01 : test_accuracy >= 0.5  # fixed", minimum=1)  # only a failed point matches
    assert not missing["holds"] and "0 finished seed(s)" in missing["why"]


def test_claims_are_read_strictly():
    with pytest.raises(ConfigError, match="cannot read the claim"):
        claims.parse("tau=0.001 test_accuracy is high")
    with pytest.raises(ConfigError, match="does not say where its bar comes from"):
        claims.parse("tau=0.001 : test_accuracy >= 0.9")
    with pytest.raises(ConfigError, match="neither a number, FILTERS : METRIC nor"):
        claims.parse("tau=0.001 : test_accuracy >= high  # mine")
    with pytest.raises(ConfigError, match="selects two points of seed 0"):
        judge("seed=0 : test_accuracy >= 0.1  # fixed", minimum=1)
    c = claims.parse("halting.tau=0.003 seed=1 : test_steps < 10  # from Graves 2016 fig 3")
    assert c.source == "from Graves 2016 fig 3" and c.right == 10.0
    assert claims.judge(c, ROWS, 1)["holds"]  # dotted keys, two filters


def test_a_full_claim_on_fewer_than_three_seeds_is_refused_before_running():
    planned = [{"values": {"halting.tau": t}, "seed": s} for t in (1e-3, 1e-2) for s in (0, 1)]
    claim = claims.parse("tau=0.001 : test_steps > tau=0.01 : test_steps")
    with pytest.raises(ConfigError, match="selects 2 seed\\(s\\); a full claim needs >= 3"):
        claims.check_design(claim, planned, claims.MIN_SEEDS)
    claims.check_design(claim, planned, 1)  # tiny: one seed is enough


def test_blocks_take_several_sweeps_overrides_and_commands():
    text = """```reproduce
sweep configs/parity.py
sweep configs/parity.py:static --config.train.steps=10
run bench adaptive bench depth --json {json}
tiny-run bench python -c 'print(1)' > {json}
expect run=bench : ratio <= 1.15  # fixed before the run
```"""
    block = parse_block(text, "README")
    assert block["sweep"] == [("configs/parity.py", []), ("configs/parity.py:static", ["--config.train.steps=10"])]
    assert block["run"] == [("bench", "adaptive bench depth --json {json}")]
    assert block["expect"][0].source == "fixed before the run"
    with pytest.raises(ConfigError, match="must write its JSON to \\{json\\}"):
        parse_block("```reproduce\nrun bench adaptive bench depth\n```", "README")
    with pytest.raises(ConfigError, match="unknown reproduce line 'sweeps x'"):
        parse_block("```reproduce\nsweeps x\n```", "README")


def test_a_run_command_gives_rows_per_seed_that_claims_read(tmp_path, capsys):
    write = "import json, sys; json.dump({'score': 0.9 + 0.01 * int(sys.argv[1])}, open(sys.argv[2], 'w'))"
    block = parse_block(
        f'```reproduce\nrun toy {sys.executable} -c "{write}" {{seed}} {{json}}\n'
        "expect run=toy : score >= 0.85  # fixed before the run\n```",
        "README",
    )
    assert run_block(block, tmp_path, tiny=False, title="toy", overrides=["--config.seed=1"]) == 0
    printed = capsys.readouterr()
    assert "toy: --config overrides apply to a block's sweeps; it has none, so they are not used" in printed.err
    verdict = json.loads((tmp_path / "claims.json").read_text())[0]
    assert verdict["holds"] and verdict["seeds"] == 3 and verdict["mean"] == pytest.approx(0.91)
    # the folder is the toy's: another reproduction (or the tiny run) would resume its JSON files as its own
    with pytest.raises(ConfigError, match=f"^{tmp_path} holds a reproduction of toy; give toy \\(tiny\\) a --workdir"):
        run_block(block, tmp_path, tiny=False, title="toy (tiny)")
    assert run_block(block, tmp_path, tiny=False, title="toy") == 0  # the same one resumes
    (tmp_path / ".reproduces").unlink()  # a folder that does not say whose it is: not taken as anyone's
    with pytest.raises(
        ConfigError, match=r"holds files but no \.reproduces to say whose; if they are toy's, run `echo"
    ):
        run_block(block, tmp_path, tiny=False, title="toy")
    assert sorted(p.name for p in tmp_path.glob("toy-seed*.json")) == [
        "toy-seed0.json",
        "toy-seed1.json",
        "toy-seed2.json",
    ]
    assert "HOLDS  run=toy : score >= 0.85" in printed.out
    assert (tmp_path / "results.md").read_text().startswith("| point | status | seed | score |")


def test_act_parity_block_reads_and_unknown_names_are_refused():
    block = read_block("act_parity")
    assert block["sweep"] == [("configs/parity.py", [])] and block["tiny"][0][0] == "configs/parity.py:tiny"
    assert all(c.left.metric.startswith("test_") for c in block["expect"] + block["tiny-expect"])
    with pytest.raises(ConfigError, match="no experiment 'nope'; experiments/ has .*act_parity"):
        read_block("nope")


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    from adaptive.cli.main import main

    (tmp_path / "afile").write_text("")
    assert main(["reproduce", "act_parity", "--tiny", "--workdir", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert f"--workdir {tmp_path / 'afile'} is a file" in err and "Traceback" not in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")  # its points and results would mix into the run
    assert main(["reproduce", "act_parity", "--tiny", "--workdir", str(tmp_path / "run")]) == 2
    said = capsys.readouterr().err
    assert "run is a training run (config.json); give the reproduction a folder of its own" in said
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]


def test_each_tiny_claim_of_act_parity_fails_on_a_run_that_cannot_ponder_or_learn():
    """Every point a 1-step static network at chance: no tiny claim may hold on it."""
    stuck = {"status": "done", "seed": 0, "test_accuracy": 0.5, "test_steps": 1.0}
    stuck |= {"test_steps_easiest": 1.0, "test_steps_hardest": 1.0}
    rows = [
        {**stuck, "values": {"seed": 0, "halting.policy": "none", "model.depth": 1}},
        {**stuck, "values": {"seed": 0, "halting.tau": 0.001}},
        {**stuck, "values": {"seed": 0, "halting.tau": 0.01}},
    ]
    tiny = read_block("act_parity")["tiny-expect"]
    assert tiny and not any(claims.judge(c, rows, 1)["holds"] for c in tiny)


@pytest.mark.slow
def test_tiny_reproduction_of_act_parity_runs_end_to_end(tmp_path):
    proc = subprocess.run(
        cli("reproduce", "act_parity", "--tiny", "--workdir", str(tmp_path), *QUIET),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdicts = json.loads((tmp_path / "claims.json").read_text())
    assert len(verdicts) == len(read_block("act_parity")["tiny-expect"]) and all(c["holds"] for c in verdicts)
    assert all(c["interval"] is None and c["seeds"] == 1 for c in verdicts) and "n/a (1 seed)" in proc.stdout
    table = (tmp_path / "results.md").read_text()
    for column in ("validation_accuracy", "test_accuracy", "test_steps", "test_shifted_accuracy"):
        assert f"| {column} |" in table
    assert "static depth 1" in table and "ACT tau=0.001" in table
    for point in ("0-seed0-policynone-depth1", "1-seed0-tau0.001"):  # each point scored once on test
        assert list((tmp_path / point / "eval").glob("test-step*.json"))
    assert list((tmp_path / "1-seed0-tau0.001" / "eval").glob("test-report-step*.json"))


def test_the_results_table_names_the_split_of_every_column():
    rows = [
        {
            "point": "0-tau",
            "status": "done",
            "method": "ACT",
            "seed": 0,
            "values": {"tau": 1},
            "eval_split": "validation",
        }
        | {"eval_accuracy": 0.9, "steps_hardest": 9.0, "test_accuracy": 0.8, "test_steps": 5.0, "halting.tau": 1},
    ]
    table, columns = held_out.table(rows)
    assert columns == [
        "point", "status", "method", "seed", "validation_accuracy", "validation_steps_hardest",
        "test_accuracy", "test_steps", "halting.tau",
    ]  # fmt: skip
    assert table[0]["validation_accuracy"] == 0.9 and rows[0]["eval_accuracy"] == 0.9  # the rows are not changed


def test_a_bar_read_from_each_row_is_judged_on_the_per_seed_gap():
    """`FACTOR * METRIC`: each seed's bar comes from its own row (a budget's target differs by row)."""
    landed = [
        row(s, 0.9, 5.0, name="b25") | {"test_flops": f, "target_flops": 100.0} for s, f in enumerate((99, 100, 101))
    ]
    c = claims.parse("name=b25 : test_flops <= 1.05 * target_flops  # issue 5: within 5%")
    assert c.right == claims.Scaled(1.05, "target_flops")
    held = claims.judge(c, landed, 3)
    assert held["holds"] and held["rule"] == "paired t over 3 seeds"
    assert held["difference"] == pytest.approx(-5.0) and held["against"] == pytest.approx(105)
    assert held["interval"][1] == pytest.approx(-5.0 + 4.3027 / 3**0.5, abs=1e-3)  # sd 1 over 3 seeds
    over = claims.judge(claims.parse("name=b25 : test_flops > 0.99 * target_flops  # fixed"), landed, 3)
    assert not over["holds"]  # mean 100 above 99, but the interval reaches below it
    missing = claims.judge(claims.parse("name=b25 : test_flops <= 1.05 * realized  # fixed"), landed, 1)
    assert (
        not missing["holds"] and "0 finished seed(s) for 'name=b25' with 'test_flops' and 'realized'" in missing["why"]
    )
    with pytest.raises(ConfigError, match="does not say where its bar comes from"):
        claims.parse("name=b25 : test_flops <= 1.05 * target_flops")
    with pytest.raises(ConfigError, match="neither a number, FILTERS : METRIC nor FACTOR \\* METRIC"):
        claims.parse("name=b25 : test_flops <= some * target_flops  # x")


def test_filter_values_with_spaces_are_quoted():
    rows = [
        {"status": "done", "seed": 0, "values": {"policy": p, "run": "s"}, "score": v}
        for p, v in (("a b", 1.0), ("a", 0.0))
    ]
    verdict = claims.judge(claims.parse("run=s policy='a b' : score > run=s policy=a : score"), rows)
    assert verdict["holds"] and verdict["mean"] == 1.0 and verdict["against"] == 0.0
    with pytest.raises(ConfigError, match="cannot read the filters"):
        claims.select(rows, "policy='a b")


def test_moe_points_get_their_last_training_window_balance(tmp_path):
    from types import SimpleNamespace

    from adaptive.experiments.reproduce import _train_columns

    lines = [
        {"split": "train", "step": 10, "moe/usage_entropy": 1.0, "moe/drop_fraction": 0.2},
        {"split": "eval", "step": 20, "eval/accuracy": 0.5},
        {"split": "train", "step": 20, "moe/usage_entropy": 1.3, "moe/drop_fraction": 0.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    points = [SimpleNamespace(workdir=tmp_path), SimpleNamespace(workdir=tmp_path / "failed")]
    rows = _train_columns(points, [{"status": "done"}, {"status": "failed"}])
    assert rows[0] == {"status": "done", "train_usage_entropy": 1.3, "train_drop_fraction": 0.1}
    assert rows[1] == {"status": "failed"}  # not read


def test_a_front_is_read_at_each_seeds_own_realized_compute():
    """`FILTERS : METRIC at X`: the static points of each seed form a front, interpolated at the
    adaptive row's X; a row beyond its front is not extrapolated, and the claim says so."""

    def point(seed, name, flops, acc):
        return row(seed, acc, 1.0, name=name) | {"test_flops": flops}

    statics = [point(s, f"s{d}", 10.0 * d, a) for s in range(3) for d, a in ((5, 0.6), (10, 0.9), (15, 0.99))]
    adaptive = [point(s, "act", 75.0 + s, 0.80 + 0.01 * s) for s in range(3)]  # the front there: 0.75..0.78
    c = claims.parse("name=act : test_accuracy > name=s5|s10|s15 : test_accuracy at test_flops  # issue 18")
    assert c.right == claims.Front("name=s5|s10|s15", "test_accuracy", "test_flops")
    verdict = claims.judge(c, statics + adaptive, 3)
    assert verdict["holds"] and verdict["difference"] == pytest.approx(0.054)  # 0.05, 0.054, 0.058
    assert verdict["against"] == pytest.approx((0.75 + 0.756 + 0.762) / 3)
    worse = [point(s, "act", 75.0 + s, 0.70) for s in range(3)]
    assert not claims.judge(c, statics + worse, 3)["holds"]
    beyond = [point(s, "act", 40.0, 0.9) for s in range(3)]  # below the cheapest static point
    verdict = claims.judge(c, statics + beyond, 3)
    assert not verdict["holds"] and "outside the front for seed(s) [0, 1, 2]" in verdict["why"]
    planned = [{"seed": s, "values": {"name": "s5"}} for s in range(3)]
    with pytest.raises(ConfigError, match="needs >= 2 points per seed"):
        claims.check_design(c, planned, 3)


def test_a_folder_holding_the_points_under_other_flags_is_refused_before_any_training(tmp_path):
    """Each point would be refused by `adaptive train`, and the claims of the earlier, good run
    replaced by "0 finished seeds": refused first, in one line, with the earlier files kept."""
    from adaptive import config as config_lib
    from adaptive.experiments.reproduce import _plan_sweep

    block = read_block("act_parity")
    (spec, extra), *_ = block["tiny"]
    _, points, _ = _plan_sweep(spec, [*extra, *QUIET], tmp_path, None)
    earlier = config_lib.to_dict(points[0].config)
    earlier["model"]["hidden"] = 8  # the folder's run was made with --config.model.hidden=8
    points[0].workdir.mkdir(parents=True)
    (points[0].workdir / "config.json").write_text(json.dumps(earlier))
    (tmp_path / "claims.json").write_text("[]")
    cannot = "holds a run that this reproduction cannot continue"
    with pytest.raises(ConfigError, match=rf"{cannot} \(model.hidden: 8 != 32\)"):
        run_block(block, tmp_path, tiny=True, overrides=QUIET)
    assert (tmp_path / "claims.json").read_text() == "[]"
    assert sorted(p.name for p in points[0].workdir.iterdir()) == ["config.json"]
    # config.json lost: the config saved with its checkpoint says the same (what `adaptive train` reads)
    (points[0].workdir / "config.json").unlink()
    saved_with = points[0].workdir / "checkpoints" / "5" / "checksum"
    saved_with.mkdir(parents=True)
    (saved_with / "metadata").write_text(json.dumps({"sha256": "0" * 64, "config": earlier}))
    with pytest.raises(ConfigError, match=rf"{cannot} \(model.hidden: 8 != 32\)"):
        run_block(block, tmp_path, tiny=True, overrides=QUIET)
    shutil.rmtree(points[0].workdir / "checkpoints")
    (points[0].workdir / "config.json").write_text(json.dumps(earlier))
    # the same config, trained longer than asked now (train.steps is a change a resume may make)
    (points[0].workdir / "config.json").write_text(json.dumps(config_lib.to_dict(points[0].config)))
    past = points[0].config.train.steps + 10
    (points[0].workdir / "checkpoints" / str(past)).mkdir(parents=True)
    with pytest.raises(ConfigError, match=rf"{cannot} \(trained to step {past}, past train.steps="):
        run_block(block, tmp_path, tiny=True, overrides=QUIET)
    assert (tmp_path / "claims.json").read_text() == "[]"


def test_a_budget_no_point_can_keep_is_refused_before_any_training(tmp_path):
    """As `adaptive sweep` does: a target past what a point's model spends at its cap would be
    refused by `adaptive train` at that point's start, after the points before it trained."""
    block = read_block("act_parity")
    over = [*QUIET, "--config.budget.unit=steps", "--config.budget.target=1000"]
    with pytest.raises(ConfigError, match=r"^sweep point \S+: config key 'budget.target' is 1000 steps; this model"):
        run_block(block, tmp_path / "out", tiny=True, overrides=over, title="act_parity (tiny)")
    assert not (tmp_path / "out").exists()
