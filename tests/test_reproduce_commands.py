"""`adaptive reproduce`'s run commands and folders: what a failed, damaged or interrupted command
leaves is never taken as a result, and names and folders it cannot use are one-line errors."""

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from adaptive.config import ConfigError
from adaptive.experiments import claims
from adaptive.experiments.reproduce import _run_shell, parse_block, run_block


def _block(command: str, expect: str = "run=toy : score >= 0.5  # a toy bar") -> dict:
    """A tiny block (one seed suffices) of one command and one claim."""
    return parse_block(f"```reproduce\ntiny-run toy {command}\ntiny-expect {expect}\n```", "README")


def test_a_command_that_fails_after_writing_its_json_is_run_again_on_resume(tmp_path):
    write = "import json, sys; json.dump({'score': 0.9, 'seed': 0}, open(sys.argv[1], 'w')); sys.exit(3)"
    block = _block(f'{sys.executable} -c "{write}" {{json}}')
    for _ in range(2):  # the second run is a resume: the failed JSON is not read as a result
        assert run_block(block, tmp_path, tiny=True, title="toy") == 1
        assert not (tmp_path / "toy.json").exists() and (tmp_path / "toy.failed.json").is_file()
        assert "exit 3 (its JSON kept as toy.failed.json)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("text, why", [("{oops", "not JSON"), ("42", "not an object or a list of objects")])
def test_a_damaged_result_of_a_command_is_one_line_naming_it(text, why, tmp_path):
    (tmp_path / ".reproduces").write_text("toy\n")
    (tmp_path / "toy.json").write_text(text)  # as a kill mid-write leaves it; a resume reads, not reruns
    with pytest.raises(ConfigError, match=f"toy.json is {why}.*; delete it to run toy again$"):
        run_block(_block("true {json}"), tmp_path, tiny=True, title="toy")


def test_a_nan_result_fails_its_claim_and_the_table_is_still_written(tmp_path):
    rows = [{"status": "done", "seed": s, "values": {"run": "toy"}, "score": v} for s, v in enumerate((0.9, 0.8))]
    rows.append({"status": "done", "seed": 2, "values": {"run": "toy"}, "score": float("nan")})
    verdict = claims.judge(claims.parse("run=toy : score >= 0.5  # a toy bar"), rows, 3)
    assert not verdict["holds"] and verdict["why"] == "a value that is not a finite number for seed(s) [2]"
    (tmp_path / ".reproduces").write_text("toy\n")
    (tmp_path / "toy.json").write_text('[{"score": NaN, "seed": 0}]')  # json.dumps writes a diverged run so
    assert run_block(_block("true {json}"), tmp_path, tiny=True, title="toy") == 1
    assert json.loads((tmp_path / "claims.json").read_text())[0]["holds"] is False


def test_a_front_read_at_a_validation_column_is_refused():
    front = "run=toy k=b|c : test_accuracy at eval_flops  # a toy bar"
    block = _block("true {json}", f"run=toy k=a : test_accuracy >= {front}")
    with pytest.raises(ConfigError, match="reads 'eval_flops'; claims are judged on test_ columns"):
        run_block(block, Path("/nonexistent"), tiny=True, title="toy")


def test_names_outside_experiments_and_folders_that_cannot_be_made_are_one_line(tmp_path, capsys):
    from adaptive.cli.main import main

    assert main(["reproduce", "../experiments/act_parity", "--tiny"]) == 2
    assert "no experiment '../experiments/act_parity'; experiments/ has " in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    # a folder's name as a shell completes it is the experiment; a folder under a file cannot be made
    assert main(["reproduce", "act_parity/", "--tiny", "--workdir", str(tmp_path / "afile" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err == f"adaptive: error: cannot make --workdir {tmp_path / 'afile' / 'sub'}: Not a directory\n"


def _alive(pid: int) -> bool:
    try:  # a zombie has ended: only its exit status is left, for a parent to read
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_an_interrupted_command_is_stopped_with_everything_it_started(tmp_path):
    """Ctrl-C here stops the command's whole process group, not just its shell: a script's
    training or scoring left running would go on writing the reproduction's results."""
    pid_file = tmp_path / "pid"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(KeyboardInterrupt):
            _run_shell(f"sleep 60 & echo $! > {pid_file}; wait", {"PATH": "/usr/bin:/bin"})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
