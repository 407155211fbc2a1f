"""Flag values the parser checks before any work: one usage error (exit 2) naming the flag, not
a traceback after minutes of timing; and runs given twice to `adaptive report`."""

import pytest

from adaptive.cli.main import main
from adaptive.cli.parser import build_parser
from adaptive.workdir.config_file import RunError


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "--workdir", "W", "--batches", "1,abc"], "--batches: must be comma-separated whole numbers"),
        (["calibrate", "--workdir", "W", "--batches", ","], "--batches: must be comma-separated whole numbers"),
        (["calibrate", "--workdir", "W", "--batches", "8,0"], "--batches: must be comma-separated whole numbers"),
        (["calibrate", "--workdir", "W", "--repeats", "0"], "--repeats: must be a whole number >= 1; got 0"),
        (["calibrate", "--workdir", "W", "--price-per-hour", "nan"], "--price-per-hour: must be a finite number"),
        (["calibrate", "--workdir", "W", "--power-watts", "-3"], "--power-watts: must be a finite number >= 0"),
        (["eval", "--workdir", "W", "--latency-batch", "-3"], "--latency-batch: must be a whole number >= 1"),
        (["report", "W", "--split", "tset"], "--split: invalid choice: 'tset'"),
        (["report", "W", "--plot", "/no/such/folder/x.png"], "--plot: its folder '/no/such/folder' does not exist"),
        (["report", "W", "--pareto", "front.txt"], "--pareto: must end in .png, .pdf, .svg"),
        (["report", "W", "--markdown", "."], "--markdown: must name a file, not a folder"),
    ],
)
def test_bad_flag_values_are_one_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_good_flag_values_parse_to_what_the_commands_use(tmp_path):
    args = build_parser().parse_args(["calibrate", "--workdir", "W", "--batches", "1, 8,32,", "--power-watts", "0"])
    assert args.batches == [1, 8, 32] and args.power_watts == 0.0 and args.repeats == 30
    args = build_parser().parse_args(["report", "W", "--plot", str(tmp_path / "a.PNG"), "--markdown", "t.md"])
    assert args.plot == str(tmp_path / "a.PNG") and args.markdown == "t.md"


def test_a_run_given_twice_to_report_is_refused_before_it_counts_as_two_seeds(tmp_path):
    from adaptive.evaluation.report import report

    (tmp_path / "run").mkdir()
    with pytest.raises(RunError, match=r"run/ is given twice \(also as .*run\); give each run once"):
        report([str(tmp_path / "run"), str(tmp_path / "run") + "/"], splits=[], plot=None, markdown=None)
    assert main(["report", str(tmp_path / "run"), str(tmp_path / "run")]) == 2


def test_report_over_a_sweeps_folder_leaves_its_files_out(tmp_path, capsys):
    """`adaptive report runs/SWEEP/*` also names the sweep's summary and plot: files, not runs."""
    from adaptive.evaluation.report import report

    (tmp_path / "summary.json").write_text("[]")
    (tmp_path / "pareto.png").write_bytes(b"")
    with pytest.raises(RunError, match="no run folder among the paths given, only files"):
        report([str(tmp_path / "summary.json")], splits=[], plot=None, markdown=None)
    (tmp_path / "point").mkdir()  # a folder is read as a run, and refused as one
    with pytest.raises(RunError, match="point is not a training run"):
        report(sorted(str(p) for p in tmp_path.iterdir()), splits=[], plot=None, markdown=None)
    assert "left out 2 file(s) that are not runs: pareto.png, summary.json" in capsys.readouterr().out


def test_two_runs_of_one_config_and_seed_are_refused_before_they_count_as_two_seeds(tmp_path):
    import json

    from adaptive import config as config_lib
    from adaptive.evaluation.report import report
    from tests.helpers import ROOT

    cfg = config_lib.load(str(ROOT / "configs/parity.py:tiny"), [])
    for name in ("run", "copy"):  # a run folder and a copy of it
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    with pytest.raises(RunError, match="copy and .*run are runs of the same config and seed; give one of them"):
        report([str(tmp_path / "run"), str(tmp_path / "copy")], splits=[], plot=None, markdown=None)
