"""Flag values the parser checks before any work: one usage error (exit 2) naming the flag, not
a traceback after minutes of timing; and runs given twice to `adaptive report`."""

from pathlib import Path

import pytest

from adaptive.cli.main import main
from adaptive.cli.parser import build_parser
from adaptive.workdir.config_file import RunError


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "--workdir", "W", "--batches", "1,abc"], "--batches: must be comma-separated whole numbers"),
        (["calibrate", "--workdir", "W", "--batches", ","], "--batches: must be comma-separated whole numbers"),
        (["calibrate", "--workdir", "W", "--batches", "1,,2"], "--batches: '1,,2' has an empty entry (a stray comma?)"),
        (["calibrate", "--workdir", "W", "--batches", "8,0"], "--batches: must be comma-separated whole numbers"),
        (
            ["calibrate", "--workdir", "W", "--batches", "1,100000"],
            "--batches: a batch of at most 65536 rows; got 100000",
        ),
        (["bench", "depth", "--batches", "1000000"], "--batches: a batch of at most 65536 rows"),
        (["calibrate", "--workdir", "W", "--repeats", "0"], "--repeats: must be a whole number >= 1; got 0"),
        (["calibrate", "--workdir", "W", "--price-per-hour", "nan"], "--price-per-hour: must be a finite number"),
        (["calibrate", "--workdir", "W", "--power-watts", "-3"], "--power-watts: must be a finite number >= 0"),
        (["eval", "--workdir", "W", "--latency-batch", "-3"], "--latency-batch: must be a whole number >= 1"),
        (["report", "W", "--split", "tset"], "--split: invalid choice: 'tset'"),
        (["report", "W", "--plot", "/no/such/folder/x.png"], "--plot: its folder '/no/such/folder' does not exist"),
        (["report", "W", "--pareto", "front.txt"], "--pareto: must end in .png, .pdf, .svg"),
        (["report", "W", "--markdown", "."], "--markdown: must name a file, not a folder"),
        (["bench", "depth", "--rounds", "0"], "--rounds: must be a whole number >= 1; got 0"),
        (["reproduce", "act_parity", "--parallel", "0"], "--parallel: must be a whole number >= 1; got 0"),
        (["sweep", "--config", "C", "--workdir", "W", "--parallel", "0"], "--parallel: must be a whole number >= 1"),
        (["bench", "depth", "--depths", "1,0"], "--depths: must be comma-separated whole numbers >= 1"),
        (["bench", "lm", "--exit-depths", "2,4,2"], "--exit-depths: lists a value twice; give each once: '2,4,2'"),
        (["bench", "generate", "--batches", "8, 8"], "--batches: lists a value twice"),
        (["bench", "depth", "--depths", "1,1"], "--depths: lists a value twice; give each once: '1,1'"),
        (["bench", "depth", "--json", "."], "--json: must name a file, not a folder"),
        (["bench", "moe", "--capacity-factor", "nan"], "--capacity-factor: must be a finite number > 0; got nan"),
        (["bench", "serve", "--artifact", "A", "--duration", "0"], "--duration: must be a finite number > 0; got 0"),
        (["bench", "quant", "--workdir", "W", "--aware-steps", "-1"], "--aware-steps: must be a whole number >= 0"),
        (["generate", "--workdir", "W", "--json", "/no/such/folder/o.jsonl"], "--json: its folder '/no/such/folder'"),
        (["generate", "--workdir", "W", "--json", "."], "--json: must name a file, not a folder"),
    ],
)
def test_bad_flag_values_are_one_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_good_flag_values_parse_to_what_the_commands_use(tmp_path):
    args = build_parser().parse_args(["calibrate", "--workdir", "W", "--batches", "1, 8,32", "--power-watts", "0"])
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


def test_report_over_a_sweep_under_way_leaves_out_the_points_not_started_or_evaluated(tmp_path, capsys):
    import json

    from adaptive.evaluation.report import report

    done, started = _config_only_runs(
        tmp_path, ("0-done", "configs/parity.py:tiny", []), ("1-started", "configs/parity.py:tiny", ["--config.seed=1"])
    )
    evaluated = {"step": 30, "split": "eval", "eval/accuracy": 0.75, "eval/steps_mean": 2.5}
    (tmp_path / "0-done" / "metrics.jsonl").write_text(json.dumps(evaluated) + "\n")
    (tmp_path / "2-new").mkdir()  # made by the sweep, nothing in it yet
    (row,) = report(sorted(str(p) for p in tmp_path.iterdir()), splits=[], plot=None, markdown=None)
    assert row["run"] == "0-done" and row["validation_accuracy"] == 0.75
    out = capsys.readouterr().out
    assert (
        "left out 1 folder(s) with no run: 2-new" in out and "left out 1 folder(s) with no eval yet: 1-started" in out
    )
    (other,) = _config_only_runs(tmp_path, ("3-started", "configs/parity.py:tiny", ["--config.seed=3"]))
    with pytest.raises(RunError, match=r"none of the 2 folders given is a run with an eval \(no eval yet\)"):
        report([started, other], splits=[], plot=None, markdown=None)


def test_report_of_a_sweeps_folder_reads_its_runs_and_leaves_out_a_damaged_one_with_its_reason(tmp_path, capsys):
    import json

    from adaptive.evaluation.report import report

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _config_only_runs(
        sweep, ("0-done", "configs/parity.py:tiny", []), ("1-broken", "configs/parity.py:tiny", ["--config.seed=1"])
    )
    evaluated = json.dumps({"step": 30, "split": "eval", "eval/accuracy": 0.75, "eval/steps_mean": 2.5})
    (sweep / "0-done" / "metrics.jsonl").write_text(evaluated + "\n")
    (sweep / "1-broken" / "metrics.jsonl").write_text('{"step": 3' + "\n" + evaluated + "\n")  # an edited line
    (sweep / "summary.json").write_text("[]")
    (row,) = report([str(sweep)], splits=[], plot=None, markdown=None)
    assert row["run"] == "0-done"
    out = capsys.readouterr().out
    assert f"{sweep}: a sweep's folder; reading its 2 run(s)" in out
    assert "left out 1-broken: " in out and "metrics.jsonl line 1 is not JSON" in out
    assert "note: 0-done is unfinished: its last eval is at step 30 of 100" in out  # tiny trains 100 steps
    (sweep / "0-done" / "checkpoints" / "100").mkdir(parents=True)  # it finished: its log was cut short
    report([str(sweep / "0-done")], splits=[], plot=None, markdown=None)
    out = capsys.readouterr().out
    assert "0-done: metrics.jsonl's last eval is at step 30, but the run finished" in out and "unfinished" not in out
    from adaptive.workdir.runinfo import WorkdirError

    with pytest.raises(WorkdirError, match="metrics.jsonl line 1 is not JSON"):  # given alone: its own error
        report([str(sweep / "1-broken")], splits=[], plot=None, markdown=None)


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


def _config_only_runs(root, *runs):
    """Run folders holding just config.json: what report reads before any result."""
    import json

    from adaptive import config as config_lib
    from tests.helpers import ROOT

    for name, spec, overrides in runs:
        (root / name).mkdir()
        cfg = config_lib.load(str(ROOT / spec), list(overrides))
        (root / name / "config.json").write_text(json.dumps(config_lib.to_dict(cfg)))
    return [str(root / name) for name, _, _ in runs]


def test_report_reads_a_sweeps_point_and_a_hand_trained_run_as_one_config(tmp_path):
    """A sweep trains its points with progress bars off: that makes no other method, so a run
    trained by hand at that point's config and seed is the same run, and at another seed a seed."""
    from adaptive.evaluation.report import _without_seed, report
    from adaptive.workdir.config_file import load_config

    point, by_hand = _config_only_runs(
        tmp_path,
        ("point", "configs/parity.py:tiny", ["--config.logging.progress=false"]),
        ("hand", "configs/parity.py:tiny", []),
    )
    with pytest.raises(RunError, match="are runs of the same config and seed"):
        report([point, by_hand], splits=[], plot=None, markdown=None)
    assert _without_seed(load_config(point)) == _without_seed(load_config(by_hand))


def test_report_refuses_language_models_beside_classifiers_and_usage_without_experts(tmp_path):
    from adaptive.evaluation.report import report

    lm, classifier = _config_only_runs(
        tmp_path, ("lm", "configs/lm.py:tiny", []), ("parity", "configs/parity.py:tiny", [])
    )
    with pytest.raises(
        RunError, match=r"lm is a language model and .*parity a classifier: .*report each kind on its own"
    ):
        report([lm, classifier], splits=[], plot=None, markdown=None)
    with pytest.raises(RunError, match="--usage plots how tokens spread over experts; none of these runs has experts"):
        report([classifier], splits=[], plot=None, markdown=None, usage=str(tmp_path / "u.png"))
    assert not (tmp_path / "u.png").exists()
    (mnist,) = _config_only_runs(tmp_path, ("mnist", "configs/mnist1d.py:tiny", []))
    (Path(mnist) / "metrics.jsonl").write_text('{"split": "eval", "step": 5, "eval/accuracy": 0.5}\n')
    with pytest.raises(RunError, match="--plot draws compute and accuracy against each example's difficulty; none"):
        report([mnist], splits=[], plot=str(tmp_path / "d.png"), markdown=None)
    assert not (tmp_path / "d.png").exists()


def test_runs_of_different_tasks_share_a_table_but_no_plot_and_no_baseline(tmp_path, capsys):
    """Parity's accuracy beside MNIST-1D's (or parity n = 16 beside n = 32) is no comparison: the
    report's plots and eval's baseline refuse it; its table lists each run with its task."""
    from adaptive.evaluation.report import report

    parity, parity32, mnist, trained_more, harder = _config_only_runs(
        tmp_path,
        ("parity", "configs/parity.py:tiny", []),
        ("parity32", "configs/parity.py:tiny", ["--config.data.parity_n=32"]),
        ("mnist", "configs/mnist1d.py", ["--config.halting.policy=none"]),
        ("more", "configs/parity.py:tiny", ["--config.data.num_train=999", "--config.model.hidden=8"]),
        ("harder", "configs/parity.py:tiny", ["--config.data.train_difficulty=8,16", "--config.halting.policy=none"]),
    )
    with pytest.raises(RunError, match=r"--pareto compares runs of one task: .*mnist is mnist1d, .*parity parity "):
        report([parity, mnist], splits=[], plot=None, markdown=None, pareto=str(tmp_path / "p.png"))
    with pytest.raises(RunError, match=r"--plot compares runs of one task: .*parity32 is parity parity_n=32"):
        report([parity, trained_more, parity32], splits=[], plot=str(tmp_path / "d.png"), markdown=None)
    with pytest.raises(RunError, match=r"none of the 2 folders given is a run with an eval \(no eval yet\)"):
        report([parity, mnist], splits=[], plot=None, markdown=None)
    assert main(["eval", "--workdir", parity, "--baseline", mnist]) == 2
    assert f"--baseline {mnist} has name 'mnist1d' and {parity} 'parity' on the validation" in capsys.readouterr().err
    # validation is drawn like training: another training range is another validation set
    assert main(["eval", "--workdir", parity, "--baseline", harder]) == 2
    assert "has validation difficulty (8, 16) and" in capsys.readouterr().err


def test_the_seed_summary_keeps_the_task_of_runs_of_several():
    from adaptive.evaluation.report import seed_summary

    rows = [
        {"run": f"r{s}", "task": "mnist1d", "method": "m", "kind": "mlp", "validation_accuracy": 0.5} for s in (0, 1)
    ]
    (out,) = seed_summary(rows, [[0, 1]])
    assert out["task"] == "mnist1d" and out["seeds"] == 2


def test_the_seed_summary_averages_flops_and_bits_per_byte_too():
    from adaptive.evaluation.report import seed_summary

    rows = [
        {"method": "m", "kind": "lm", "eval_flops": f, "bits_per_byte": b, "validation_accuracy": a}
        for f, b, a in [(100.0, 2.0, 0.5), (110.0, 2.2, 0.6)]
    ]
    (out,) = seed_summary(rows, [[0, 1]])
    assert (
        out["seeds"] == 2 and out["eval_flops"] == pytest.approx(105.0) and out["bits_per_byte"] == pytest.approx(2.1)
    )
    assert out["validation_accuracy"] == pytest.approx(0.55) and out["eval_flops_ci95"].startswith("+-")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["depth", "--depths", "5", "--cap", "3"], "--depths 5 is past --cap 3"),
        (["moe", "-k", "3", "--experts", "2"], "-k 3 is more than --experts 2"),
        (["lm", "--layers", "2", "--exit-depths", "1,2"], "--exit-depths 2 must be below --layers 2"),
        (["lm", "--layers", "1"], "--layers 1: early exit needs a block above the exit; give at least 2"),
        (["generate", "--new-tokens", "1"], "--new-tokens 1: a token's time is a generation's less one token's"),
        (["act-train", "--steps", "1"], "--steps 1: a rate needs at least 2 timed steps"),
    ],
)
def test_bench_flags_that_contradict_each_other_are_one_line_before_any_timing(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"adaptive: error: {message}" or (message in err and len(err.strip().splitlines()) == 1)


def test_bench_lms_default_exit_depths_follow_its_layers():
    """A smaller --layers is not refused over a default the user never gave."""
    from adaptive.cli.bench_command import _check_flags_against_each_other

    for layers, depths in [(2, [1]), (5, [1, 2, 4]), (8, [1, 2, 4, 6])]:
        args = build_parser().parse_args(["bench", "lm", "--layers", str(layers)])
        _check_flags_against_each_other(args)
        assert args.exit_depths == depths


def test_a_trained_runs_depth_is_checked_against_its_own_blocks_not_the_fresh_models_layers():
    from adaptive.cli.bench_command import _check_flags_against_each_other

    args = build_parser().parse_args(["bench", "generate", "--workdir", "runs/lm-exits", "--depth", "6"])
    _check_flags_against_each_other(args)  # generate.run checks it against the run's blocks


def test_a_bench_json_may_go_in_a_folder_the_bench_makes_but_not_under_a_file(tmp_path):
    args = build_parser().parse_args(["bench", "serve", "--artifact", "A", "--json", str(tmp_path / "new" / "s.json")])
    assert args.json == str(tmp_path / "new" / "s.json")  # beside --out DIR, which the benchmark makes
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "depth", "--json", str(tmp_path / "file" / "x.json")])


def test_a_sweep_run_with_no_point_at_a_time_is_refused_rather_than_waiting_forever(tmp_path):
    from adaptive.config import ConfigError
    from adaptive.experiments import sweep

    with pytest.raises(ConfigError, match="--parallel must be at least 1; got 0"):
        sweep.run("unused", [], 0)


def test_bench_json_is_strict_json_with_null_for_a_figure_that_has_no_value(tmp_path):
    import json
    import math

    from adaptive.bench.results import write_json

    write_json(tmp_path / "rows.json", [{"flops_per_correct": math.inf, "p99_ms": math.nan, "runs": [1.0, -math.inf]}])
    strict = json.loads((tmp_path / "rows.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict == [{"flops_per_correct": None, "p99_ms": None, "runs": [1.0, None]}]


def test_the_act_train_benchmark_finds_its_config_from_any_folder(tmp_path, monkeypatch):
    from adaptive import config as config_lib
    from adaptive.bench import act_train

    monkeypatch.chdir(tmp_path)
    assert config_lib.load(str(act_train.PARITY_CONFIG)).data.name == "parity"


def test_out_of_memory_is_one_line_and_other_errors_still_raise(monkeypatch, capsys):
    """XLA's RESOURCE_EXHAUSTED (an export capacity or batch far too large) ends the command with
    its first line, not a compiler traceback; any other unexpected error is not hidden."""
    import importlib

    main_module = importlib.import_module("adaptive.cli.main")  # the module (adaptive.cli.main is also its function)

    def out_of_memory(args, overrides):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 640597671512 bytes.\nfrom the compiler")

    monkeypatch.setattr(main_module, "_calibrate_exits", out_of_memory)
    assert main(["calibrate-exits", "--workdir", "W"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("adaptive: error: RESOURCE_EXHAUSTED: Out of memory allocating 640597671512 bytes.")

    def host_out_of_memory(args, overrides):  # numpy's allocation of a --tokens far too large
        raise MemoryError("Unable to allocate 1.86 TiB for an array with shape (1000000000, 512)")

    monkeypatch.setattr(main_module, "_calibrate_exits", host_out_of_memory)
    assert main(["calibrate-exits", "--workdir", "W"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("adaptive: error: out of memory: Unable to allocate 1.86 TiB") and "ask for less" in line

    def bug(args, overrides):
        raise RuntimeError("something else")

    monkeypatch.setattr(main_module, "_calibrate_exits", bug)
    with pytest.raises(RuntimeError, match="something else"):
        main(["calibrate-exits", "--workdir", "W"])


def test_calibrate_exits_names_a_classifier_as_one(tmp_path, capsys):
    (run,) = _config_only_runs(tmp_path, ("parity", "configs/parity.py:tiny", []))
    assert main(["calibrate-exits", "--workdir", run]) == 2
    assert "parity holds a classifier (model.kind='rnn'); exits are a language model's" in capsys.readouterr().err


def test_generated_text_is_printed_with_control_bytes_escaped():
    from adaptive.cli.generate_command import _printable

    assert _printable("def f():\n\treturn \x12\x1b[2J") == "def f():\n\treturn \\x12\\x1b[2J"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "lm", "--width", "30", "--heads", "4"], "--width 30 is not a multiple of --heads 4"),
        (["bench", "generate", "--width", "30", "--heads", "4"], "--width 30 is not a multiple of --heads 4"),
        (["bench", "lm", "--capacity", "1.5"], "--capacity 1.5 must be at most 1"),
        (["bench", "generate", "--thresholds", "0.5"], "--thresholds times a trained run's exits: give --workdir"),
    ],
)
def test_bench_flags_that_contradict_the_model_are_one_line_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"adaptive: error: {message}" or (line.startswith("adaptive: error: ") and message in line)


def test_bench_generate_names_a_classifier_run_as_one(tmp_path, capsys):
    from tests.helpers import train_tiny

    train_tiny(tmp_path / "rnn", 2)
    assert main(["bench", "generate", "--workdir", str(tmp_path / "rnn")]) == 2
    assert "rnn holds a classifier (model.kind='rnn'); this times decoding" in capsys.readouterr().err
