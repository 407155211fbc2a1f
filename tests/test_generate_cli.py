"""`adaptive generate` on a trained run: text, per-token depths, budgets, one-line refusals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from adaptive.evaluation.exit_risk import GRID
from tests.helpers import ROOT, cli, train_tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm") / "run"
    train_tiny(workdir, 2, config="configs/lm.py:tiny", overrides=("--config.lm.exits=true",))
    return workdir


def _generate(run_dir, *args):
    command = cli("generate", "--workdir", str(run_dir), *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_generate_prints_text_and_depths_and_writes_rows(run_dir, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    # the third prompt is the bytes a, b, 0xff, c: not UTF-8, and a byte-level model takes it
    out = _generate(
        run_dir, "--prompt", "def f(x):", "--prompt", "import", "--prompt", "ab\udcffc", "--max-new-tokens", "6",
        "--budget", "1", "--unit", "layers", "--json", str(rows_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("  depth ") == 3 and "def f(x):\u2502" in out.stdout
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["def f(x):", "import", "ab\ufffdc"]
    for row in rows:
        assert len(row["tokens"]) == len(row["layers"]) == len(row["flops"]) <= 6
        assert row["layers"] == [1.0] * len(row["tokens"])  # the layer cap: one block per token
        assert row["stop"] in ("eos", "max_new_tokens") and row["decode_flops"] == pytest.approx(sum(row["flops"][1:]))
        assert row["exit_threshold"] == 0.9  # the config's: no certified one, no --threshold
    # a layer ceiling past the model's depth is its depth (as a FLOPs budget past a full pass is one)
    deep = _generate(run_dir, "--prompt", "x", "--max-new-tokens", "2", "--budget", "10", "--unit", "layers")
    assert deep.returncode == 0 and "(budget 10 layers)" in deep.stdout, deep.stderr[-2000:]
    assert "note: --budget 10 layers is past this model's 2 blocks; it is 2" in deep.stderr


@pytest.mark.slow
def test_a_flops_budget_and_a_time_budget_hold(run_dir, tmp_path):
    rows_path = tmp_path / "rows.jsonl"
    out = _generate(run_dir, "--prompt", "x = ", "--max-new-tokens", "8", "--budget", "3e5", "--json", str(rows_path))
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(rows_path.read_text())
    assert row["decode_flops"] <= 3e5 and (row["stop"] == "budget" or len(row["tokens"]) == 8)
    timed = _generate(run_dir, "--prompt", "x = ", "--max-new-tokens", "4", "--budget", "1e4", "--unit", "ms")
    assert timed.returncode == 0 and "timed: layer cap 2" in timed.stderr, timed.stderr[-2000:]
    assert "warning" not in timed.stderr and "(budget 10000 ms): within it" in timed.stdout
    over = _generate(run_dir, "--prompt", "x = ", "--max-new-tokens", "4", "--budget", "1e-9", "--unit", "ms")
    assert over.returncode == 0 and "warning: no layer cap fits" in over.stderr, over.stderr[-2000:]
    assert "(budget 1e-09 ms): over it" in over.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--prompt", "x", "--budget", "-1"), "--budget=-1.0 must be > 0"),
        (
            ("--prompt", "x", "--budget", "0.5", "--unit", "layers"),
            "--budget 0.5 --unit layers: layer_cap must be a whole number, got 0.5",
        ),
        (("--prompt", "x", "--seed", "-1"), "seed=-1 is outside"),  # checked before a cast to uint32
        (("--prompt", "x", "--unit", "ms"), "--unit ms is the unit of --budget, and none is given"),
        (("--prompt", "x", "--mod-bias", "1"), "--mod-bias applies to a model with MoD blocks;"),
        (("--prompt", "x", "--max-new-tokens", "0"), "--max-new-tokens=0"),
        (("--prompt", "x", "--max-new-tokens", "16385"), "--max-new-tokens=16385 must be in [1, 16384]"),
        (("--prompt", "x", "--experts", "1"), "--experts applies to a model with experts;"),
        (
            (
                "--max-new-tokens",
                "4",
            ),
            "at least one --prompt",
        ),
        # the limits are checked before --unit ms times the decoder at every layer cap
        (("--prompt", "x", "--top-p", "0", "--budget", "5", "--unit", "ms"), "--top-p 0.0: top_p=0.0 is outside"),
    ],
)
def test_bad_requests_are_refused_in_one_line(run_dir, args, message):
    out = _generate(run_dir, *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1


def test_calibrate_exits_writes_a_certified_threshold_that_generate_uses(run_dir):
    command = cli("calibrate-exits", "--workdir", str(run_dir), "--delta", "0.5", "--epsilon", "0.2", "--windows", "16")
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((run_dir / "exit_calibration.json").read_text())
    assert record["delta"] == 0.5 and record["epsilon"] == 0.2 and record["windows"] == 16
    tested = record["tested"]
    assert [row["threshold"] for row in tested] == sorted((row["threshold"] for row in tested), reverse=True)
    certified = [row for row in tested if row["certified"]]
    # fixed-sequence testing: the certified thresholds are a prefix, and the lowest one is chosen
    assert tested[: len(certified)] == certified
    assert record["threshold"] == (certified[-1]["threshold"] if certified else 2.0)
    assert {row["threshold"] for row in tested} <= set(GRID)  # the grid's values, not float32's 0.9499999880
    generated = _generate(run_dir, "--prompt", "x", "--max-new-tokens", "2")
    said = "no exit threshold certified" if record["threshold"] == 2.0 else f"exit threshold {record['threshold']:g}, "
    assert generated.returncode == 0 and said in generated.stdout and "(adaptive calibrate-exits)" in generated.stdout
    (run_dir / "exit_calibration.json").write_text(json.dumps({**record, "threshold": 2.0}))
    none = _generate(run_dir, "--prompt", "x", "--max-new-tokens", "2")  # not called certified when none was
    assert f"no exit threshold certified at delta 0.5, epsilon 0.2 on step {record['step']}" in none.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # says what it replaces
    assert "replaces the previous calibration: no exit threshold certified at delta 0.5" in again.stdout
    assert "(kept as exit_calibration." in again.stdout  # nothing lost: renamed back, it is used again
    (run_dir / "exit_calibration.json").write_text(json.dumps({**record, "step": record["step"] + 100}))
    stale = _generate(run_dir, "--prompt", "x", "--max-new-tokens", "2")  # certified on other weights
    assert stale.returncode == 0 and "calibrate-exits)" not in stale.stdout and "not used" in stale.stderr
    (run_dir / "exit_calibration.json").write_text("{not json")
    broken = _generate(run_dir, "--prompt", "x", "--max-new-tokens", "2")
    assert broken.returncode == 2 and "exit_calibration.json is not a readable" in broken.stderr
    (run_dir / "exit_calibration.json").unlink()
    refused = subprocess.run(
        cli("calibrate-exits", "--workdir", str(run_dir), "--delta", "1.5"), capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "--delta=1.5 must be in (0, 1)" in refused.stderr


def test_bench_generate_times_a_runs_thresholds_against_every_block(run_dir, tmp_path):
    from adaptive.bench import generate

    rows = generate.run(
        workdir=str(run_dir), thresholds=(0.5, 0.0), batches=(2,), new_tokens=4, repeats=2, precisions=("fp32", "int8")
    )
    names = ["every block", "exit at 0.5", "exit at 0"]
    assert [(r["variant"], r["precision"]) for r in rows] == [(n, p) for p in ("fp32", "int8") for n in names]
    for first in (0, 3):  # each precision's exits against its own every-block decoding
        assert rows[first]["mean_layers"] == 2.0  # the tiny config's two blocks
        if math.isfinite(rows[first]["ms_per_token"]):  # NaN where timing noise outweighed 3 tokens
            assert rows[first]["ratio"] == 1.0
        else:
            assert math.isnan(rows[first]["ratio"])
        assert rows[first + 2]["mean_layers"] == 1.0  # threshold 0: every token leaves at the first exit
    with pytest.raises(ValueError, match="give --workdir"):
        generate.run(thresholds=(0.5,), batches=(1,), new_tokens=4, repeats=1)
    bad = subprocess.run(
        cli("bench", "generate", "--workdir", str(run_dir), "--precisions", "fp32,int3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "--precisions 'fp32,int3'" in bad.stderr and "Traceback" not in bad.stderr


def test_prompts_are_padded_only_as_far_as_learned_positions_allow(monkeypatch):
    from adaptive.cli import generate_command
    from adaptive.workdir.config_file import RunError

    tried = []

    def decoder_for_run(run, *, prompt_capacity, new_capacity):  # a model of 256 learned positions
        tried.append(prompt_capacity)
        if prompt_capacity + new_capacity > 256:
            raise ValueError(
                f"{prompt_capacity + new_capacity} prompt and new tokens exceed the learned positions (256)"
            )
        return f"decoder P={prompt_capacity}"

    monkeypatch.setattr(generate_command.G, "decoder_for_run", decoder_for_run)
    assert generate_command._decoder(None, 100, 100) == "decoder P=128" and tried == [128]
    assert generate_command._decoder(None, 130, 100) == "decoder P=130" and tried[1:] == [192, 130]
    with pytest.raises(RunError, match="^257 prompt and new tokens exceed"):  # the prompt's own length named
        generate_command._decoder(None, 157, 100)


def test_report_gives_a_language_models_run_a_row_per_token(run_dir, tmp_path):
    from adaptive.evaluation.report import report
    from adaptive.workdir.config_file import RunError

    (row,) = report([str(run_dir)], splits=[], plot=None, markdown=None, pareto=str(tmp_path / "pareto.png"))
    assert row["eval_flops"] > 0 and row["bits_per_byte"] > 0 and (tmp_path / "pareto.png").exists()
    with pytest.raises(RunError, match="--split re-scores classifiers"):
        report([str(run_dir)], splits=["test"], plot=None, markdown=None)


def test_a_threshold_for_a_model_without_exits_is_refused_before_it_loads(tmp_path, capsys):
    from adaptive import config as config_lib
    from adaptive.cli.main import main

    cfg = config_lib.load(str(ROOT / "configs/lm.py:tiny"), [])  # no exits; no checkpoint needed to refuse
    (tmp_path / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    assert main(["generate", "--workdir", str(tmp_path), "--prompt", "x", "--threshold", "0.5"]) == 2
    assert "--threshold applies to a model with exits;" in capsys.readouterr().err


@pytest.mark.parametrize(
    "stored, shown", [(0.37, 0.37), (0.949999988079071, 0.95)], ids=["off the grid", "the grid's 0.95 as float32"]
)
def test_eval_reports_the_certified_threshold_beside_its_grid(stored, shown, run_dir, tmp_path):
    """The threshold generate and an artifact use by default is a point of the LM report, named
    as certified, though the grid of thresholds does not hold it; one a calibration stored as
    float32 is the grid's own point, not a second row beside it."""
    from adaptive.evaluation.lm_report import lm_report
    from adaptive.inference.restore import load_run

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    step = load_run(run, language_model=True).step
    record = {"threshold": stored, "step": step, "delta": 0.5, "epsilon": 0.2}
    (run / "exit_calibration.json").write_text(json.dumps(record))
    report, _ = lm_report(load_run(run, language_model=True), "validation", tmp_path / "eval", limit=2)
    certified = [p for p in report["points"] if p["certified"]]
    assert [p["label"] for p in certified] == [f"exit at {shown:g} (certified)"]
    assert sum(p["threshold"] is not None and abs(p["threshold"] - shown) < 1e-6 for p in report["points"]) == 1


def test_a_damaged_or_unwritable_calibration_is_one_line_before_the_long_work(run_dir, tmp_path, capsys):
    from adaptive.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("exit_calibration*"))  # another test's
    (run / "exit_calibration.json").write_text('{"threshold": "0.3", "step": 2, "delta": 0.1, "epsilon": 0.1}')
    for command in (["eval"], ["export", "--out", str(tmp_path / "art")]):  # read where they use the threshold
        assert main([*command, "--workdir", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("adaptive: error: ") and len(err.splitlines()) == 1, err
        assert "exit_calibration.json is not a readable exit calibration (threshold is '0.3', not a number)" in err
    assert not (tmp_path / "art").exists()
    assert main(["calibrate-exits", "--workdir", str(run), "--delta", "0.5", "--windows", "8"]) == 0
    assert "replaces an unreadable previous calibration (kept as exit_calibration.1.json)" in capsys.readouterr().out
    assert '"threshold": "0.3"' in (run / "exit_calibration.1.json").read_text()  # nothing lost
    (run / "exit_calibration.json").unlink()
    (run / "exit_calibration.json").mkdir()  # where the calibration goes: refused before any window is scored
    assert main(["calibrate-exits", "--workdir", str(run), "--delta", "0.5", "--windows", "8"]) == 1
    out = capsys.readouterr()
    assert out.err == f"adaptive: error: cannot write {run / 'exit_calibration.json'}: Is a directory\n"
    assert out.out == ""  # no table of thresholds that could not be saved


def test_the_help_states_the_new_token_ceiling_the_command_enforces():
    from adaptive.cli.generate_command import MAX_NEW_TOKENS
    from adaptive.cli.parser import build_parser

    gen = build_parser()._subparsers._group_actions[0].choices["generate"]
    (action,) = [a for a in gen._actions if "--max-new-tokens" in a.option_strings]
    assert f"1 to {MAX_NEW_TOKENS}" in action.help


@pytest.mark.slow
def test_mod_bias_moves_how_many_tokens_the_mod_blocks_run(tmp_path):
    workdir = tmp_path / "mod"
    train_tiny(workdir, 2, config="configs/lm.py:tiny", overrides=("--config.lm.mod_capacity=0.5",))
    layers = {}
    for bias in ("-100", "100"):  # every token through the MoD blocks; none
        rows = tmp_path / f"rows{bias}.jsonl"
        flags = ("--prompt", "def f(x):", "--max-new-tokens", "6", "--mod-bias", bias, "--json", str(rows))
        out = _generate(workdir, *flags)
        assert out.returncode == 0, out.stderr[-2000:]
        layers[bias] = json.loads(rows.read_text())["layers"]
    assert sum(layers["100"]) < sum(layers["-100"]), layers
    bad = _generate(workdir, "--prompt", "x", "--mod-bias", "nan")
    assert bad.returncode == 2 and "mod_bias=nan is outside" in bad.stderr, bad.stderr[-2000:]
