"""A workdir that cannot be written, a disk that fills mid-run, damaged run.json and config.json:
one line naming the file, the last good checkpoint kept, and a way to go on."""

import dataclasses
import errno
import json
import logging
import os
import subprocess
import sys

import pytest

from adaptive import config as config_lib
from adaptive import data
from adaptive.training.train import train_and_evaluate
from adaptive.workdir.checkpoint import Checkpointer
from adaptive.workdir.config_file import RunError, load_config
from adaptive.workdir.runinfo import WorkdirError
from tests.helpers import QUIET, ROOT, final_state, metric_rows, train_command

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")


def _config(steps: int = 40) -> config_lib.Config:
    cfg = config_lib.load(f"{ROOT}/configs/parity.py:tiny", QUIET)
    train = dataclasses.replace(cfg.train, steps=steps, checkpoint_every=10, log_every=5, eval_every=steps)
    return dataclasses.replace(cfg, train=train)


@pytest.fixture(scope="module", autouse=True)
def prepared_data():
    """The dataset is prepared before any CLI run, so that stderr holds only what is asserted."""
    data.prepare(_config().data)


def _stderr_lines(workdir, *overrides) -> tuple[int, list[str]]:
    proc = subprocess.run(train_command(workdir, *overrides), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_a_workdir_under_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / "run"
    assert _stderr_lines(workdir, "--config.train.steps=5") == (
        1,
        [f"adaptive: error: cannot write {workdir}: Not a directory"],
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root")
def test_a_read_only_workdir_is_a_one_line_error(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    workdir = tmp_path / "ro" / "run"
    assert _stderr_lines(workdir, "--config.train.steps=5") == (
        1,
        [f"adaptive: error: cannot write {workdir}: Permission denied"],
    )


@pytest.mark.parametrize(
    ("name", "action", "strerror"),
    [
        ("config.json", "read", "Is a directory"),
        ("run.json", "read", "Is a directory"),
        ("metrics.jsonl", "write", "Is a directory"),
        ("checkpoints", "write", "File exists"),
    ],
)
def test_a_workdir_file_that_cannot_be_written_is_a_one_line_error(tmp_path, name, action, strerror):
    """A folder where a file belongs (or a file where the checkpoint folder belongs): real OS
    errors that stop root too."""
    tmp_path.joinpath(name).mkdir() if name != "checkpoints" else tmp_path.joinpath(name).write_text("")
    with pytest.raises(WorkdirError) as raised:
        train_and_evaluate(_config(5), tmp_path)
    assert str(raised.value) == f"cannot {action} {tmp_path / name}: {strerror}"


class _FullAfter:
    """A file that takes `rows` writes, then reports a full disk."""

    def __init__(self, file, rows: int):
        self.file, self.rows = file, rows

    def write(self, text: str) -> int:
        self.rows -= 1
        if self.rows < 0:
            raise FULL_DISK
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_while_writing_metrics_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from adaptive.training import metrics

    real_open = metrics.Path.open

    def open_metrics(self, *args, **kwargs):  # 6 train rows (steps 5 to 30) fit, the 7th (step 35) does not
        file = real_open(self, *args, **kwargs)
        return _FullAfter(file, 6) if self.name == "metrics.jsonl" else file

    monkeypatch.setattr(metrics.Path, "open", open_metrics)
    with pytest.raises(WorkdirError) as raised:
        train_and_evaluate(_config(), tmp_path)
    assert str(raised.value) == f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on device"
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3)
    assert ckpt.steps() == [10, 20, 30]
    ckpt.close()
    assert final_state(tmp_path)[0] == 30


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path):
    """The save at step 30 fails inside orbax: the CLI says so in one line, step 20 stays the
    latest, orbax's unfinished folder is ignored, and a rerun resumes from 20 to the end."""
    workdir = tmp_path / "run"
    patch = (
        "import errno, sys\n"
        "from orbax.checkpoint._src.handlers import json_checkpoint_handler as h\n"
        "real = h.JsonCheckpointHandler._save_fn\n"
        "async def full(self, item, directory):\n"
        "    if '/30.orbax-checkpoint-tmp' in str(directory):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return await real(self, item, directory)\n"
        "h.JsonCheckpointHandler._save_fn = full\n"
        "from adaptive.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = train_command(workdir, "--config.train.steps=40", "--config.train.checkpoint_every=10")[3:]
    proc = subprocess.run([sys.executable, "-c", patch, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"adaptive: error: cannot write {workdir / 'checkpoints' / '30'}: No space left on device"
    ]
    assert [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()] == ["30.orbax-checkpoint-tmp"]
    assert final_state(workdir)[0] == 20
    rerun = subprocess.run(
        train_command(workdir, "--config.train.steps=40", "--config.train.checkpoint_every=10"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {workdir} from step 20" in rerun.stderr
    assert final_state(workdir)[0] == 40
    train_steps = [r["step"] for r in metric_rows(workdir) if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 40


def test_a_damaged_run_json_is_set_aside_and_a_new_one_started(tmp_path, caplog):
    cfg = _config(10)
    train_and_evaluate(cfg, tmp_path)
    record = tmp_path / "run.json"
    damaged = record.read_text()[:100]
    record.write_text(damaged)
    with caplog.at_level(logging.WARNING, logger="adaptive.workdir.runinfo"):
        train_and_evaluate(cfg, tmp_path)
    aside = tmp_path / "run.json.corrupt-1"
    assert aside.read_text() == damaged
    assert len(json.loads(record.read_text())["starts"]) == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{record} is corrupted (JSON error at line ")
    assert message.endswith(f"; moved it to {aside} and started a new one")


def test_a_damaged_config_json_with_checkpoints_is_refused_until_restored_or_deleted(tmp_path):
    cfg = _config(10)
    train_and_evaluate(cfg, tmp_path)
    saved = tmp_path / "config.json"
    saved.write_text(saved.read_text()[:-40])
    before = (tmp_path / "metrics.jsonl").read_text()
    try:
        json.loads(saved.read_text())
    except json.JSONDecodeError as e:
        where = f"JSON error at line {e.lineno} column {e.colno}: {e.msg}"
    expected = (
        f"{saved} is corrupted ({where}); restore it, or delete it and rerun adaptive train with the run's "
        "--config and overrides (run.json records the command) to rewrite it and resume"
    )
    for call in (lambda: train_and_evaluate(cfg, tmp_path), lambda: load_config(tmp_path)):  # trainer and readers
        with pytest.raises(RunError) as raised:
            call()
        assert str(raised.value) == expected
    saved.unlink()
    train_and_evaluate(cfg, tmp_path)  # rewritten; the finished run resumes at its last step
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert load_config(tmp_path) == cfg


def test_a_damaged_config_json_without_checkpoints_is_set_aside(tmp_path, caplog):
    (tmp_path / "config.json").write_text('{"name": ')
    with caplog.at_level(logging.WARNING, logger="adaptive.training"):
        train_and_evaluate(_config(10), tmp_path)
    assert (tmp_path / "config.json.corrupt-1").read_text() == '{"name": '
    assert load_config(tmp_path) == _config(10)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'config.json'} is corrupted (JSON error at line 1 column 10: Expecting value) and no "
        f"checkpoint depends on it; moved it to {tmp_path / 'config.json.corrupt-1'}"
    ]


def test_a_metrics_file_cut_mid_line_reads_without_its_last_row(tmp_path):
    """A run killed mid-write leaves its last line cut short (a sweep reads the file to see which
    points finished); a bad line before the last was edited and is refused naming the file."""
    from adaptive.training.metrics import read_jsonl
    from adaptive.workdir.runinfo import WorkdirError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "split": "train"}\n{"step": 20, "spl')
    assert read_jsonl(path) == [{"step": 10, "split": "train"}]
    path.write_text('{"step": 10, "spl\n{"step": 20, "split": "train"}\n')
    with pytest.raises(WorkdirError, match="metrics.jsonl line 1 is not JSON"):
        read_jsonl(path)


def test_a_resume_drops_a_damaged_line_with_a_warning_and_keeps_the_file_as_it_was(tmp_path, caplog):
    """A resume rewrites metrics.jsonl up to its step; a line before the last that is not JSON was
    dropped without a word (that row lost for good): now said, and the file set aside first."""
    from adaptive.training.metrics import JsonlWriter

    path = tmp_path / "metrics.jsonl"
    damaged = '{"step": 5, "split": "train"}\n\nGARBAGE\n{"step": 10, "split": "train"}\n{"step": 20, "spl'
    path.write_text(damaged)
    with caplog.at_level(logging.WARNING, logger="adaptive.training.metrics"):
        JsonlWriter(path, resume_step=10).close()
    assert path.read_text() == '{"step": 5, "split": "train"}\n{"step": 10, "split": "train"}\n'
    aside = tmp_path / "metrics.jsonl.corrupt-1"
    assert aside.read_text() == damaged
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} line 3 is not JSON (edited or damaged): dropped; the file as it was is {aside}"
    ]
    caplog.clear()
    JsonlWriter(path, resume_step=10).close()  # a clean file (and a last line cut by a kill) says nothing
    assert caplog.records == [] and not (tmp_path / "metrics.jsonl.corrupt-2").exists()
    path.write_text('{"step": 5, "split": "train"}\nGARBAGE\n')  # a whole last line: not cut by a kill
    with caplog.at_level(logging.WARNING, logger="adaptive.training.metrics"):
        JsonlWriter(path, resume_step=10).close()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"{path} line 2 is not JSON"]


def test_a_saved_config_with_a_key_this_version_lacks_is_named_as_the_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"old_key": 1}}))
    with pytest.raises(RunError, match=r"config\.json: unknown config key 'train\.old_key'"):
        load_config(tmp_path)


def test_a_saved_config_without_a_data_dir_reads_the_default_data_folder_not_the_current_one(tmp_path):
    saved = config_lib.to_dict(config_lib.load("configs/parity.py:tiny"))
    del saved["data"]["data_dir"]  # saved before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_config(tmp_path).data.data_dir == config_lib.data_dir(config_lib.DataConfig()) != ""


def test_an_exit_calibration_with_a_threshold_no_token_could_pass_is_refused(tmp_path):
    from adaptive.workdir import exit_calibration

    guarantee = {"step": 10, "delta": 0.1, "epsilon": 0.1}
    for threshold in (float("nan"), -1.0):  # NaN: `score >= NaN` is false, so no token would ever exit
        exit_calibration.write(tmp_path, {"threshold": threshold, **guarantee})
        with pytest.raises(ValueError, match="is not a readable exit calibration .*not a number >= 0"):
            exit_calibration.read(tmp_path)
    exit_calibration.write(tmp_path, {"threshold": 0.5, "step": 10})  # the guarantee it carries is missing
    with pytest.raises(RunError, match=r"is not a readable exit calibration \(no 'delta'\)"):
        exit_calibration.read(tmp_path)
    typed = tmp_path / "typed"
    typed.mkdir()
    for key, bad in (("threshold", "0.5"), ("step", 10.0), ("epsilon", True)):  # describe() formats them as numbers
        exit_calibration.write(typed, {"threshold": 0.5, **guarantee, key: bad})
        with pytest.raises(RunError, match=f"is not a readable exit calibration \\({key} is {bad!r}, not a"):
            exit_calibration.read(typed)
    exit_calibration.write(tmp_path, {"threshold": 0.5, **guarantee})
    assert exit_calibration.read(tmp_path)["threshold"] == 0.5 and not list(tmp_path.glob("*.tmp"))
    # a new calibration (another delta certifying nothing) keeps the one it replaces beside it
    path, kept = exit_calibration.write(tmp_path, {"threshold": 2.0, **guarantee, "delta": 0.001})
    assert exit_calibration.read(tmp_path)["threshold"] == 2.0 and json.loads(kept.read_text())["threshold"] == 0.5
    assert kept.name == "exit_calibration.4.json"  # the fourth one written in this test
    kept.rename(tmp_path / "exit_calibration.json")  # put back by hand: the next kept is still numbered last
    assert exit_calibration.write(tmp_path, {"threshold": 0.5, **guarantee})[1].name == "exit_calibration.4.json"
    assert exit_calibration.write(tmp_path, {"threshold": 0.5, **guarantee})[1].name == "exit_calibration.5.json"


def test_a_rerun_asking_for_fewer_steps_than_were_trained_is_refused_and_the_config_kept(tmp_path):
    train_and_evaluate(_config(10), tmp_path)
    saved = (tmp_path / "config.json").read_text()
    with pytest.raises(config_lib.ConfigError, match=r"already trained to step 10, past train.steps=5; give train"):
        train_and_evaluate(_config(5), tmp_path)
    assert (tmp_path / "config.json").read_text() == saved  # still says the 10 steps the checkpoints hold
    train_and_evaluate(_config(20), tmp_path)  # more steps: the run goes on
    assert final_state(tmp_path)[0] == 20


@pytest.mark.parametrize("marker, holds", [("meta.json", "an exported artifact"), ("summary.json", "a sweep's points")])
def test_a_folder_another_command_wrote_is_not_trained_into(marker, holds, tmp_path):
    (tmp_path / marker).write_text("{}")
    with pytest.raises(config_lib.ConfigError, match=f"holds {holds} \\({marker}\\), not a run; give another"):
        train_and_evaluate(_config(10), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [marker]


def test_a_folder_of_runs_is_not_trained_into(tmp_path):
    """A sweep's folder before its summary is written holds only its points' runs."""
    (tmp_path / "0-tau0.001").mkdir()
    (tmp_path / "0-tau0.001" / "config.json").write_text("{}")
    with pytest.raises(config_lib.ConfigError, match=r"holds runs \(0-tau0.001, ...\), not a run; give another"):
        train_and_evaluate(_config(10), tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("inside", ["eval", "checkpoints/more"])
def test_a_run_inside_another_run_is_refused_before_it_writes(inside, tmp_path):
    """A run's subfolders are its files: a run started there would be deleted with it."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(config_lib.ConfigError, match=f"{tmp_path / inside} is inside the run {tmp_path}; give a"):
        train_and_evaluate(_config(10), tmp_path / inside)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "config.json"]


def test_a_second_trainer_of_one_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    """Two trainers of one folder (two sweeps of it, or a train started by hand beside a sweep)
    would interleave checkpoints and metrics: the second is refused with BUSY_EXIT, which the
    sweep reads as "trained elsewhere", and writes nothing; the folder is free once the first ends."""
    from adaptive.cli.main import main
    from adaptive.workdir.runinfo import BUSY_EXIT, WorkdirBusy, sole_trainer

    workdir = tmp_path / "run"
    workdir.mkdir()
    command = ["train", "--config", f"{ROOT}/configs/parity.py:tiny", "--workdir", str(workdir), *QUIET]
    with sole_trainer(workdir):
        assert main(command) == BUSY_EXIT
        # said before the data and model are set up: a config those would refuse is still "busy"
        assert main([*command, "--config.data.name=no_such_dataset"]) == BUSY_EXIT
        with pytest.raises(WorkdirBusy), sole_trainer(workdir):
            pass
    assert f"is being trained by another process (pid {os.getpid()}); wait for it" in capsys.readouterr().err
    assert [p.name for p in workdir.iterdir()] == [".train.lock"]  # no config.json, no run.json
    with sole_trainer(workdir):  # let go: the next trainer takes it
        pass


def test_a_folder_on_a_filesystem_without_locks_still_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    import fcntl

    from adaptive.workdir import runinfo

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # what some network and FUSE mounts answer

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), runinfo.sole_trainer(tmp_path):
        pass
    assert "cannot be locked (" in caplog.text and "nothing stops a second trainer" in caplog.text


def test_eval_that_could_not_write_its_results_says_so_before_evaluating(tmp_path):
    """A run whose eval folder cannot be made (here a file stands where it goes; a read-only
    mount alike): one line before the evaluation, whose scores would be computed and lost."""
    from tests.helpers import cli, train_tiny

    train_tiny(tmp_path, 2)
    (tmp_path / "eval").write_text("")
    proc = subprocess.run(cli("eval", "--workdir", str(tmp_path), "--budget", "2"), capture_output=True, text=True)
    assert (proc.returncode, proc.stderr.strip().splitlines()) == (
        1,
        [f"adaptive: error: cannot write {tmp_path / 'eval'}: File exists"],
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root")
def test_a_folder_that_exists_but_cannot_be_written_is_refused(tmp_path):
    from adaptive.workdir.runinfo import check_writable_folder

    (tmp_path / "eval").mkdir(mode=0o555)
    with pytest.raises(WorkdirError, match=f"^cannot write {tmp_path / 'eval'}: Permission denied$"):
        check_writable_folder(tmp_path / "eval")


def test_an_emptied_metrics_file_beside_checkpoints_is_said_as_such(tmp_path):
    from adaptive.evaluation.report import final_eval

    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(RunError, match=f"^{tmp_path} has no eval yet$"):  # a run stopped before its first eval
        final_eval(tmp_path)
    (tmp_path / "checkpoints" / "200").mkdir(parents=True)
    with pytest.raises(RunError, match=r"has no eval yet \(metrics.jsonl is empty, though it has checkpoints\)$"):
        final_eval(tmp_path)
