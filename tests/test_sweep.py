"""`adaptive sweep`: points from get_sweep, failures isolated, reruns that do no work twice,
interruption and resumption, the summary and the wandb YAML."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import QUIET, ROOT, cli

CONFIG = """
import importlib.util

_spec = importlib.util.spec_from_file_location("parity_config", {parity!r})
_parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_parity)


def get_config(arg=None):
    cfg = _parity.get_config("tiny")
    cfg.train.steps = {steps}
    cfg.train.log_every = 10
    cfg.train.eval_every = {steps}
    cfg.train.checkpoint_every = {checkpoint}
    return cfg


def get_sweep(arg=None):
    return {points!r}
"""


def write_config(tmp_path, points, steps=30, checkpoint=30):
    path = tmp_path / "sweep_config.py"
    path.write_text(
        CONFIG.format(parity=str(ROOT / "configs/parity.py"), steps=steps, checkpoint=checkpoint, points=points)
    )
    return str(path)


def sweep(config, workdir, *args, timeout=600):
    return subprocess.run(
        cli("sweep", "--config", config, "--workdir", str(workdir), *args, *QUIET),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


def test_a_failing_point_does_not_stop_the_others_and_a_rerun_does_no_work_twice(tmp_path):
    points = [{"halting.tau": 1e-3}, {"data.name": "no_such_dataset"}, {"halting.tau": 1e-2}]
    config, workdir = write_config(tmp_path, points), tmp_path / "sweep"
    first = sweep(config, workdir, "--parallel", "2")
    assert first.returncode == 1, first.stderr
    rows = summary(workdir)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert [r["point"] for r in rows] == ["0-tau0.001", "1-nameno_such_dataset", "2-tau0.01"]
    assert "no_such_dataset" in rows[1]["detail"] and rows[0]["eval_accuracy"] > 0
    assert rows[0]["eval_split"] == rows[2]["eval_split"] == "validation"  # points are compared on validation
    assert rows[0]["eval_examples"] == rows[2]["eval_examples"] > 0  # and on as many examples
    assert (workdir / "summary.csv").read_text().splitlines()[0].startswith("index,point,status")
    assert (workdir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    started = sorted(line for line in first.stdout.splitlines() if ": training (" in line)  # said as each starts
    assert len(started) == 3 and "point 0-tau0.001: training (" in started[0]
    assert started[0].endswith(f"of 3; log: {workdir / '0-tau0.001'}/train.log)")

    done = [workdir / rows[i]["point"] for i in (0, 2)]
    before = {d: ((d / "metrics.jsonl").read_bytes(), (d / "train.log").stat().st_size) for d in done}
    failed_log = (workdir / rows[1]["point"] / "train.log").stat().st_size
    second = sweep(config, workdir)
    assert second.returncode == 1
    assert "skipping 2 finished point(s): 0-tau0.001, 2-tau0.01" in second.stdout
    assert {d: ((d / "metrics.jsonl").read_bytes(), (d / "train.log").stat().st_size) for d in done} == before
    assert (workdir / rows[1]["point"] / "train.log").stat().st_size > failed_log  # the failed point was retried

    from adaptive.experiments.sweep import load_points, refresh_status

    def statuses(*base):
        points = load_points(config, workdir, list(base))
        for point in points:
            refresh_status(point)
        return [point.status for point in points]

    assert statuses() == ["done", "new", "done"]
    # the sweep's config changed since: not "done" (the rerun's `adaptive train` says how it differs)
    assert statuses("--config.optim.learning_rate=0.01") == ["partial", "new", "partial"]
    final = max((done[0] / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
    shutil.rmtree(final)  # as if the final save had failed after the final eval was logged
    assert statuses() == ["partial", "new", "done"]


def test_a_killed_sweep_resumes_its_points_from_their_checkpoints(tmp_path):
    """SIGKILL to the sweep: its running child gets SIGTERM (parent-death signal), saves and
    exits; the rerun resumes that point from its checkpoint and trains the rest."""
    config = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}], steps=400, checkpoint=50)
    workdir = tmp_path / "sweep"
    proc = subprocess.Popen(
        cli("sweep", "--config", config, "--workdir", str(workdir), *QUIET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = workdir / "0-tau0.001"
    deadline = time.time() + 300
    while not list((first / "checkpoints").glob("[0-9]*")) and time.time() < deadline:
        time.sleep(0.2)
    child = int((first / ".sweep.pid").read_text())
    proc.kill()
    proc.wait(timeout=60)
    while time.time() < deadline:  # the orphaned trainer saves and exits on its own
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the trainer outlived its sweep")
    rerun = sweep(config, workdir)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [r["status"] for r in summary(workdir)] == ["done", "done"]
    starts = json.loads((first / "run.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["resumed_from_step"] > 0


def test_sigterm_stops_the_sweep_cleanly(tmp_path):
    config = write_config(tmp_path, [{"halting.tau": 1e-3}], steps=2000, checkpoint=50)
    workdir = tmp_path / "sweep"
    proc = subprocess.Popen(
        cli("sweep", "--config", config, "--workdir", str(workdir), *QUIET),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "0-tau0.001" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "rerun the same command to resume" in err
    assert list((workdir / "0-tau0.001" / "checkpoints").glob("[0-9]*"))  # the point saved on its way out


def test_dry_run_point_and_wandb_yaml(tmp_path):
    config = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2, "seed": 3}])
    workdir = tmp_path / "sweep"
    dry = sweep(config, workdir, "--dry-run")
    assert dry.returncode == 0 and "1-tau0.01-seed3" in dry.stdout and "new" in dry.stdout
    assert not workdir.exists()
    one = sweep(config, workdir, "--point", "1", "--wandb")
    assert one.returncode == 0, one.stderr
    assert [p.name for p in workdir.iterdir() if p.is_dir()] == ["1-tau0.01-seed3"]
    spec = yaml.safe_load((workdir / "sweep.yaml").read_text())
    assert spec["method"] == "grid" and spec["parameters"]["point"]["values"] == [0, 1]
    assert spec["command"][-1] == "${args}" and config in spec["command"]
    # the summary is the whole sweep's: each wandb agent runs one --point, and the last to end writes it
    assert [(r["point"], r["status"]) for r in summary(workdir)] == [("0-tau0.001", "new"), ("1-tau0.01-seed3", "done")]


def test_the_wandb_yaml_names_the_config_by_its_absolute_path(tmp_path, monkeypatch):
    """An agent may start in any folder: a config given relative to this one must still be found."""
    from adaptive.experiments.sweep_summary import wandb_yaml

    monkeypatch.chdir(tmp_path)
    command = yaml.safe_load(wandb_yaml("sweep_config.py:small", tmp_path, 2, []).read_text())["command"]
    assert str(tmp_path / "sweep_config.py") + ":small" in command


def test_a_sweep_folder_must_not_be_a_file_or_a_run(tmp_path, capsys):
    from adaptive.cli.main import main

    config = write_config(tmp_path, [{"halting.tau": 1e-3}])
    (tmp_path / "file").write_text("")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert main(["sweep", "--config", config, "--workdir", str(tmp_path / "file")]) == 2
    assert "file is a file; a sweep's folder holds a run folder per point" in capsys.readouterr().err
    assert main(["sweep", "--config", config, "--workdir", str(tmp_path / "file" / "sub")]) == 1  # as train
    assert f"cannot write {tmp_path / 'file' / 'sub'}: Not a directory" in capsys.readouterr().err
    assert main(["sweep", "--config", config, "--workdir", str(tmp_path / "run")]) == 2
    assert "run is a training run (config.json); give the sweep a folder of its own" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "meta.json").write_text("{}")
    assert main(["sweep", "--config", config, "--workdir", str(tmp_path / "art"), "--dry-run"]) == 2
    assert "art is an exported artifact (meta.json); give the sweep a folder of its own" in capsys.readouterr().err


def test_a_point_another_process_trains_or_a_signal_stopped_is_not_failed(tmp_path):
    from adaptive.experiments.sweep import collect, load_points
    from adaptive.workdir.runinfo import BUSY_EXIT

    (point,) = load_points(write_config(tmp_path, [{"halting.tau": 1e-3}]), tmp_path / "sweep")
    point.workdir.mkdir(parents=True)
    cases = [(BUSY_EXIT, "running"), (130, "new"), (-2, "partial"), (-15, "partial"), (1, "failed")]
    for code, status in cases:  # interrupted: new before a first checkpoint, partial after it
        if code == -2:
            (point.workdir / "checkpoints" / "10").mkdir(parents=True)
        die = f"import os, signal; signal.signal({-code}, signal.SIG_DFL); os.kill(os.getpid(), {-code})"
        exit_with = die if code < 0 else f"raise SystemExit({code})"
        (point.workdir / "train.log").write_text("")
        point.process = subprocess.Popen([sys.executable, "-c", exit_with])
        point.process.wait()
        mine = str(point.process.pid)
        (point.workdir / ".sweep.pid").write_text(mine if code != BUSY_EXIT else "4242")  # BUSY: another's child
        assert collect(point) and point.status == status, (code, point.status)
        held = (point.workdir / ".sweep.pid").exists()
        assert held == (code == BUSY_EXIT), "only this sweep's own child's pid file goes"
        (point.workdir / ".sweep.pid").unlink(missing_ok=True)


WAIT = "import os, sys, time\nwhile not os.path.exists(sys.argv[3]): time.sleep(0.05)\n"  # until released
HOLDERS = {  # run as `python -c CODE --workdir DIR RELEASE`, as a trainer's command line names its folder
    # another sweep's child: its pid in .sweep.pid, written by that sweep
    ".sweep.pid": WAIT,
    # a hand-started `adaptive train`: it holds .train.lock, its pid inside, and writes no .sweep.pid
    ".train.lock": "import fcntl\nf = open(sys.argv[2] + '/.train.lock', 'a+')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
    "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()\n",
}


@pytest.mark.parametrize("held_by", sorted(HOLDERS))
def test_a_sweep_waits_for_a_point_another_process_holds_and_takes_it_over_when_left_unfinished(tmp_path, held_by):
    """Two sweeps of one folder share its points: each waits for the other's, so that its summary
    and exit status are the whole sweep's; a point its holder leaves unfinished is trained here.
    A point trained by hand is waited for too (its trainer would refuse a second one)."""
    import time

    from adaptive.experiments.sweep import load_points

    config = write_config(tmp_path, [{"halting.tau": 1e-3}])
    (point,) = load_points(config, tmp_path / "sweep")
    point.workdir.mkdir(parents=True)
    release = tmp_path / "release"
    code = "import os, sys, time\n" + (HOLDERS[held_by] + WAIT if held_by == ".train.lock" else WAIT)
    holder = subprocess.Popen([sys.executable, "-c", code, "--workdir", str(point.workdir), str(release)])
    if held_by == ".sweep.pid":
        (point.workdir / ".sweep.pid").write_text(str(holder.pid))
    while not (point.workdir / held_by).exists() or not (point.workdir / held_by).read_text():
        time.sleep(0.05)
    command = cli("sweep", "--config", config, "--workdir", str(tmp_path / "sweep"), *QUIET)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as it prints them
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    while not seen or "waiting for it" not in seen[-1]:  # the sweep has found the point held
        seen.append(proc.stdout.readline())
        assert seen[-1], "".join(seen)  # it ended without waiting
    release.write_text("")  # the holder stops, leaving the point unfinished
    holder.wait()  # reaped as it ends, as its own sweep would
    out, err = proc.communicate(timeout=600)
    out = "".join(seen) + out
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert f"point {point.name} is being trained by another process: waiting for it" in out
    assert out.count(f"point {point.name}: new, left by the process that trained it: resuming it here") == 1, out
    assert "1 done" in out and (point.workdir / "metrics.jsonl").is_file()
    assert "being trained by another process" not in (point.workdir / "train.log").read_text()  # no refused start


def test_a_point_inserted_before_finished_ones_does_not_train_them_again(tmp_path, capsys):
    """Points are named by their place in get_sweep: inserting one renames those after it, whose
    runs would train again from scratch beside their old folders (and `report` refuse both)."""
    import json as json_lib

    from adaptive import config as config_lib
    from adaptive.cli.main import main
    from adaptive.experiments.sweep import load_points

    workdir = tmp_path / "sweep"
    trained = load_points(write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}]), workdir)
    for point in trained:
        point.workdir.mkdir(parents=True)
        (point.workdir / "config.json").write_text(json_lib.dumps(config_lib.to_dict(point.config)))
    inserted = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 3e-3}, {"halting.tau": 1e-2}])
    assert main(["sweep", "--config", inserted, "--workdir", str(workdir), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "its run is in 1-tau0.01" in table and table.count("conflict") == 1
    assert main(["sweep", "--config", inserted, "--workdir", str(workdir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"sweep point {workdir / '2-tau0.01'} has no run, but 1-tau0.01 holds one of its config" in line
    assert line.endswith("rename 1-tau0.01 to 2-tau0.01 to keep its training, or add new points at the end")
    assert sorted(p.name for p in workdir.iterdir()) == ["0-tau0.001", "1-tau0.01"]


def test_a_moved_point_is_matched_by_its_length_too_and_each_folder_once(tmp_path):
    """A sweep over train.steps: a resume may change the length, so the config alone would match
    any of the old folders; the run of 50 steps is the 50-step point's."""
    import json as json_lib

    from adaptive import config as config_lib
    from adaptive.experiments.sweep import load_points
    from adaptive.experiments.sweep_folders import moved_runs

    workdir = tmp_path / "sweep"
    for point in load_points(write_config(tmp_path, [{"train.steps": 30}, {"train.steps": 50}]), workdir):
        point.workdir.mkdir(parents=True)
        (point.workdir / "config.json").write_text(json_lib.dumps(config_lib.to_dict(point.config)))
    inserted = load_points(write_config(tmp_path, [{"seed": 7}, {"train.steps": 30}, {"train.steps": 50}]), workdir)
    moved = {index: folder.name for index, folder in moved_runs(inserted, inserted).items()}
    assert moved == {1: "0-steps30", 2: "1-steps50"}


def test_a_damaged_or_longer_trained_point_is_not_done(tmp_path):
    import json as json_lib

    from adaptive import config as config_lib
    from adaptive.experiments.sweep import load_points, refresh_status

    config = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}], steps=30)
    damaged, longer = load_points(config, tmp_path / "sweep")
    for point in (damaged, longer):
        (point.workdir / "checkpoints" / "40").mkdir(parents=True)  # trained to 40 steps, past 30
        (point.workdir / "config.json").write_text(json_lib.dumps(config_lib.to_dict(point.config)))
        (point.workdir / "metrics.jsonl").write_text(json_lib.dumps({"split": "eval", "step": 40}) + "\n")
    eval_row = (damaged.workdir / "metrics.jsonl").read_text()
    (damaged.workdir / "metrics.jsonl").write_text("{not json\n" + eval_row)  # a torn last line would be read past
    refresh_status(damaged)
    refresh_status(longer)
    assert damaged.status == "failed" and "metrics.jsonl line 1 is not JSON" in damaged.detail
    assert longer.status == "partial"  # rerun, `adaptive train` refuses it in one line: not silently "done"


def test_a_config_its_points_cannot_continue_is_refused_and_keeps_the_summary(tmp_path, capsys):
    """Lowering train.steps below what the points reached: every point would be refused by
    `adaptive train`, and a summary of "failed" rows would replace the finished sweep's."""
    import json as json_lib

    from adaptive import config as config_lib
    from adaptive.cli.main import main
    from adaptive.experiments.sweep import load_points

    workdir = tmp_path / "sweep"
    trained = load_points(write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}], steps=40), workdir)
    for point in trained:
        (point.workdir / "checkpoints" / "40").mkdir(parents=True)
        (point.workdir / "config.json").write_text(json_lib.dumps(config_lib.to_dict(point.config)))
        (point.workdir / "metrics.jsonl").write_text(json_lib.dumps({"split": "eval", "step": 40}) + "\n")
    (workdir / "summary.json").write_text('[{"status": "done"}]\n')
    shorter = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}], steps=30)
    assert main(["sweep", "--config", shorter, "--workdir", str(workdir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("conflict") == 2 and "trained to step 40, past train.steps=30" in out
    assert main(["sweep", "--config", shorter, "--workdir", str(workdir)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"sweep point {trained[0].workdir} holds a run this config cannot continue (trained to step 40" in line
    assert "give train.steps >= 40); use a new --workdir" in line
    assert line.endswith("(and 1 more point(s): --dry-run lists them)")
    assert (workdir / "summary.json").read_text() == '[{"status": "done"}]\n'
    # a change a resume may make (more steps) is no conflict; nor is another point's, with --point
    longer = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2}], steps=50)
    (trained[1].workdir / "config.json").write_text("{damaged")
    for config, point in [(longer, []), (shorter, []), (longer, ["--point", "0"])]:
        assert main(["sweep", "--config", config, "--workdir", str(workdir), "--dry-run", *point]) == 0
        out = capsys.readouterr().out
        if config == longer:
            assert "conflict" not in out.split("1-tau0.01")[0]
        assert ("its config.json is damaged and its checkpoints depend on it" in out) == (point == [])


def test_a_point_resumed_under_more_steps_says_its_decaying_schedule_is_stretched(tmp_path, capsys):
    import dataclasses
    import json as json_lib

    from adaptive import config as config_lib
    from adaptive.cli.main import main
    from adaptive.experiments.sweep import load_points

    workdir = tmp_path / "sweep"
    config = write_config(tmp_path, [{"optim.schedule": "cosine"}, {"optim.schedule": "constant"}], steps=50)
    for point in load_points(config, workdir):
        shorter = dataclasses.replace(point.config, train=dataclasses.replace(point.config.train, steps=30))
        point.workdir.mkdir(parents=True)
        (point.workdir / "config.json").write_text(json_lib.dumps(config_lib.to_dict(shorter)))
    assert main(["sweep", "--config", config, "--workdir", str(workdir), "--dry-run"]) == 0
    assert not capsys.readouterr().err  # nothing trained yet: nothing resumes
    for point in load_points(config, workdir):
        (point.workdir / "checkpoints" / "30").mkdir(parents=True)
    assert main(["sweep", "--config", config, "--workdir", str(workdir), "--dry-run"]) == 0
    (note,) = capsys.readouterr().err.strip().splitlines()  # the constant rate has nothing to change
    assert note.startswith("note: point 0-schedulecosine: train.steps 30 -> 50 changes its cosine learning-rate")


@pytest.mark.parametrize(
    "points, message",
    [
        (
            [{"halting.taux": 1e-3}],
            "sweep point 0 (0-taux0.001): unknown config key 'halting.taux' (did you mean 'halting.tau'",
        ),
        (
            [{"train.steps": -1}],
            "sweep point 0 (0-steps-1): config key 'train.steps' is -1; must be in [1, 1_000_000_000]",
        ),
        ([], "get_sweep must return a non-empty list of dicts of config keys"),
        (
            [{"halting.tau": 1e-3}, {"halting.tau": 0.001}],
            "sweep points 0 and 1 are the same config (1-tau0.001); keep one",
        ),
        (
            [{"halting.tau": 1e-3}, {"data.eval_split": "test"}],
            "sweep point 1 (1-eval_splittest): data.eval_split='test'; a sweep's points are compared on their "
            "periodic evals, which must score 'validation'",
        ),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(tmp_path, points, message):
    proc = sweep(write_config(tmp_path, points), tmp_path / "sweep")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("adaptive: error: ") and message in line
    assert not (tmp_path / "sweep").exists()


def test_points_get_disjoint_device_subsets(tmp_path):
    from adaptive.experiments.sweep import device_env

    devices = ["0", "1", "2", "3"]
    assert device_env(devices, 0, 2)["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert device_env(devices, 1, 2)["CUDA_VISIBLE_DEVICES"] == "2,3"
    proc = sweep(write_config(tmp_path, [{"halting.tau": 1e-3}]), tmp_path / "s", "--parallel", "3",
                 "--devices", "0,1,2,3", "--devices-per-point", "2")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "adaptive: error: --parallel 3 x --devices-per-point 2 needs 6 devices; --devices lists 4"
    ]


def test_assigned_tpu_chips_may_hold_two_devices_each(monkeypatch):
    from types import SimpleNamespace

    from adaptive.config import ConfigError
    from adaptive.training import parallel

    monkeypatch.setattr(parallel.jax, "local_devices", lambda: [SimpleNamespace(platform="tpu")] * 4)
    monkeypatch.setenv(parallel.ASSIGNED_DEVICES, "0,1")  # two chips of two devices each (v3)
    parallel.check_assigned_devices()
    monkeypatch.setenv(parallel.ASSIGNED_DEVICES, "0,1,2")
    with pytest.raises(ConfigError, match=r"given device\(s\) 0,1,2 \(sweep --devices\) but JAX sees 4 tpu"):
        parallel.check_assigned_devices()
    monkeypatch.setattr(parallel.jax, "local_devices", lambda: [SimpleNamespace(platform="gpu")] * 4)
    with pytest.raises(ConfigError, match="JAX sees 4 gpu"):  # one GPU per id
        parallel.check_assigned_devices()


def test_a_point_given_devices_jax_does_not_see_fails_instead_of_training_on_the_cpu(tmp_path):
    """CUDA_VISIBLE_DEVICES naming no device here makes JAX fall back to the CPU with a warning
    only: the point fails at once, naming the ids and what JAX sees (here: the CPU alone)."""
    proc = sweep(write_config(tmp_path, [{"halting.tau": 1e-3}]), tmp_path / "s", "--devices", "7")
    assert proc.returncode == 1, proc.stderr
    (row,) = summary(tmp_path / "s")
    assert row["status"] == "failed"
    assert "was given device(s) 7 (sweep --devices) but JAX sees 1 cpu device(s)" in row["detail"]
    assert not (tmp_path / "s" / row["point"] / "checkpoints").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--config.halting.tau=0.5"],
            "--config.halting.tau=0.5 overrides halting.tau, which {config}'s get_sweep sets for point(s) 1: the "
            "point's value would win and the override be dropped; remove it, or change the sweep",
        ),
        (["--config.train.steps=5", "--config.train.steps", "7"], "--config.train.steps is given twice (5, then 7)"),
        (["--devices", "0,abc"], "--devices: must be comma-separated device ids (whole numbers >= 0); got '0,abc'"),
        (["--devices", "0,0"], "--devices: lists a device twice; give each once: '0,0'"),
        (["--devices-per-point", "0"], "--devices-per-point: must be a whole number >= 1"),
        (["--devices-per-point", "2"], "--devices-per-point shares out --devices; give the ids, e.g. --devices 0,1"),
        (["--devices", "0", "--parallel", "2"], "--devices lists 1 id(s), too few for --parallel 2 points to get one"),
    ],
)
def test_flags_a_sweep_would_drop_or_misuse_are_refused(tmp_path, flags, message):
    config = write_config(tmp_path, [{"seed": 0}, {"halting.tau": 1e-3}])
    proc = sweep(config, tmp_path / "sweep", *flags)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    line = proc.stderr.strip().splitlines()[-1]  # argparse's own errors come after its usage line
    assert message.format(config=config) in line, line
    assert not (tmp_path / "sweep").exists()


def test_layered_overrides_reach_a_point_once_the_last_winning(tmp_path):
    """An experiment's own overrides, then the caller's (reproduce): each key reaches the point's
    training once, at the caller's value; one key twice from a user alike is refused only when the
    values differ."""
    from adaptive.cli.main import _given_once
    from adaptive.config import ConfigError
    from adaptive.experiments.sweep import load_points

    config = write_config(tmp_path, [{"halting.tau": 1e-3}])
    layered = ["--config.train.steps=5", "--config.seed=3", "--config.train.steps=7"]
    (point,) = load_points(config, tmp_path / "s", layered)
    assert point.config.train.steps == 7 and point.config.seed == 3
    assert [o for o in point.overrides if "train.steps" in o] == ["--config.train.steps=7"]
    _given_once(["--config.seed=1", "--config.seed=1"])  # the same thing said twice
    with pytest.raises(ConfigError, match="--config.seed is given twice"):
        _given_once(["--config.seed=1", "--config.seed=2"])


def test_devices_without_a_count_per_point_are_shared_out_evenly(tmp_path, monkeypatch):
    from adaptive.cli.main import main
    from adaptive.experiments import sweep as sweep_lib

    given = []
    monkeypatch.setattr(sweep_lib, "run", lambda spec, points, parallel, devices, per_point: given.append(
        (parallel, devices, per_point)) or points)  # fmt: skip
    monkeypatch.setattr("adaptive.experiments.sweep_summary.summarize", lambda points, workdir: [])
    config = write_config(tmp_path, [{"halting.tau": 1e-3}])
    for flags in (["--parallel", "2", "--devices", "0,1,2,3,4"], ["--devices", "3,1", "--devices-per-point", "1"]):
        main(["sweep", "--config", str(config), "--workdir", str(tmp_path / "s"), *flags])
    assert given == [(2, ["0", "1", "2", "3", "4"], 2), (1, ["3", "1"], 1)]


def test_a_point_may_set_a_tuple_key_to_empty(tmp_path):
    from adaptive.experiments.sweep import load_points

    config = write_config(tmp_path, [{"budget.requests": ()}, {"budget.requests": (1.0, 2.0)}])
    empty, two = load_points(config, tmp_path / "sweep")
    assert empty.config.budget.requests == () and two.config.budget.requests == (1.0, 2.0)


def test_a_stale_pid_file_naming_another_process_does_not_hold_a_point(tmp_path):
    from adaptive.experiments.sweep import load_points, refresh_status

    config = write_config(tmp_path, [{"halting.tau": 1e-3}])
    (point,) = load_points(config, tmp_path / "sweep")
    point.workdir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a live process, but not this point's trainer (a pid reused after a reboot)
        (point.workdir / ".sweep.pid").write_text(str(other.pid))
        refresh_status(point)
        assert point.status == "new"
        relative = os.path.relpath(point.workdir, tmp_path)  # another sweep may spell it otherwise
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "--workdir", relative]
        mine = subprocess.Popen(sleeper, cwd=tmp_path)
        deadline = time.time() + 30
        while relative.encode() not in Path(f"/proc/{mine.pid}/cmdline").read_bytes():
            assert time.time() < deadline  # until the child has exec'd (a fork shows the parent's line)
            time.sleep(0.05)
        (point.workdir / ".sweep.pid").write_text(str(mine.pid))
        refresh_status(point)
        assert point.status == "running"
        mine.kill()
    finally:
        other.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_exits_with_the_shells_code_for_its_signal(signum, tmp_path, monkeypatch, capsys):
    from adaptive.cli.main import main
    from adaptive.experiments import sweep as sweep_lib

    def stopped(*args, **kwargs):
        raise sweep_lib.SweepInterrupted(signum)

    monkeypatch.setattr(sweep_lib, "run", stopped)
    config = write_config(tmp_path, [{"halting.tau": 1e-3}], steps=5, checkpoint=5)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "summary.csv").write_text("index,name,status\n0,0-tau0.001,done\n")  # an earlier run's
    assert main(["sweep", "--config", config, "--workdir", str(tmp_path / "sweep")]) == 128 + signum  # 130, 143
    assert f"stopped by signal {int(signum)}; rerun the same command to resume" in capsys.readouterr().err
    summary = (tmp_path / "sweep" / "summary.csv").read_text()  # where each point stopped, not a stale one
    assert "0-tau0.001" in summary and ",new," in summary and "done" not in summary


def test_a_budget_no_point_can_keep_is_refused_before_anything_trains(tmp_path, capsys):
    """`adaptive train` refuses a target past what the model spends at its cap at its start; a
    sweep says so for each such point before the first trains (--dry-run: status refused)."""
    from adaptive.cli.main import main

    config = write_config(tmp_path, [{"halting.tau": 1e-3}, {"halting.tau": 1e-2, "halting.max_steps": 12}])
    workdir, over = tmp_path / "sweep", "--config.budget.target=10"
    assert main(["sweep", "--config", config, "--workdir", str(workdir), "--dry-run", over]) == 0
    out = capsys.readouterr().out
    assert out.count("refused") == 1 and "'budget.target' is 10 steps; this model spends 1 to 6 steps" in out
    assert main(["sweep", "--config", config, "--workdir", str(workdir), over]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("sweep point 0 (0-tau0.001): config key 'budget.target' is 10 steps; this model "
                         "spends 1 to 6 steps per example")  # fmt: skip
    assert not workdir.exists()
