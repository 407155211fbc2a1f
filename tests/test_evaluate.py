"""`adaptive eval` and `adaptive report` on a finished tiny run."""

import json
import subprocess

import pytest

from tests.helpers import cli, train_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny") / "act"
    train_tiny(workdir, 30)
    return workdir


def _run(*args):
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=300)


def test_eval_under_a_budget_writes_json_and_respects_it(tiny_run):
    proc = _run("eval", "--workdir", str(tiny_run), "--split", "validation", "--budget", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tiny_run / "eval" / "validation-budget2-step30.json").read_text())
    assert out["budget"] == 2 and out["step"] == 30 and out["split"] == "validation"
    assert 1 <= out["eval/steps_mean"] <= 2 and out["eval/steps_max"] <= 2
    assert len(out["eval/steps_by_difficulty"]) == 17
    assert "eval accuracy" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget must be in [1, 6] for this model; got 0"),
        (["--step", "7"], "has no checkpoint at step 7; it has [30]"),
    ],
)
def test_eval_bad_arguments_are_one_line_errors(tiny_run, args, message):
    proc = _run("eval", "--workdir", str(tiny_run), *args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("adaptive: error: ") and message in line


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    proc = _run("eval", "--workdir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"adaptive: error: {tmp_path} is not a training run (no config.json)"


def test_report_writes_table_and_plot(tiny_run, tmp_path):
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    proc = _run("report", str(tiny_run), "--split", "validation", "--markdown", str(md), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    table = md.read_text().splitlines()
    assert table[0].split(" | ")[:3] == ["| run", "method", "kind"]
    assert "ACT tau=0.003" in table[2] and "validation_accuracy" in table[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_times_the_compiled_predictor_on_real_batches(tiny_run):
    proc = _run("eval", "--workdir", str(tiny_run), "--latency-batch", "32")
    assert proc.returncode == 0, proc.stderr
    # 512 test examples: 16 full batches, cycled through for 200 timed calls
    assert "latency at batch 32 over 200 calls (16 distinct batches): p50" in proc.stdout
    out = json.loads((tiny_run / "eval" / "test-step30.json").read_text())
    assert 0 < out["latency/p50_ms"] <= out["latency/p95_ms"] <= out["latency/p99_ms"]
    assert 1 <= out["latency/steps_mean"] <= 6


def test_pareto_front_on_hand_made_points():
    from adaptive.curves import pareto_front

    points = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (5, 0.9), (0.5, 0.4), (2, 0.65)]
    assert pareto_front(points) == [(0.5, 0.4), (1, 0.5), (2, 0.7), (4, 0.9)]
