"""DIR/exit_calibration.json: the exit threshold `adaptive calibrate-exits` certified for a run.

Written by adaptive.evaluation.exit_risk's caller, read by whatever runs the model (generation,
export), so it lives with the run's other files: the threshold, the guarantee it carries
(delta, epsilon, windows) and the checkpoint step it was measured on.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

from adaptive.workdir.config_file import RunError
from adaptive.workdir.runinfo import WorkdirError, check_writable_folder, file_errors, write_atomic

FILE = "exit_calibration.json"
NO_EXITS = 2.0  # the threshold of "none certified": above every confidence, no token exits


def write(workdir: str | Path, record: dict) -> tuple[Path, Path | None]:
    """(the calibration's path, where the one it replaces is kept: exit_calibration.<n>.json, the
    first free n; None when there was none). Another delta or epsilon is another claim, and the
    newest is what generation reads; the older one stays, to put back by renaming it."""
    path, kept = Path(workdir) / FILE, None
    if path.exists():  # numbered after the highest kept, so the numbers say which is newer
        numbers = [
            int(p.suffixes[0][1:]) for p in path.parent.glob(f"{path.stem}.*.json") if p.suffixes[0][1:].isdigit()
        ]
        kept = path.with_name(f"{path.stem}.{max(numbers, default=0) + 1}.json")
        with file_errors(kept):
            kept.write_bytes(path.read_bytes())
    write_atomic(path, json.dumps(record, indent=2) + "\n")  # a reader never sees half a file
    return path, kept


def check_writable(workdir: str | Path) -> None:
    """A WorkdirError (one line) where the calibration could not be written: asked before the
    scoring, whose results would otherwise be printed and lost."""
    path = Path(workdir) / FILE
    check_writable_folder(path.parent)
    if path.exists() and not path.is_file():
        raise WorkdirError(f"cannot write {path}: {os.strerror(errno.EISDIR if path.is_dir() else errno.EEXIST)}")


def read(workdir: str | Path) -> dict | None:
    """The run's calibration, or None when it has none; a corrupted file is a RunError (one line)."""
    path = Path(workdir) / FILE
    if not path.exists():
        return None
    with file_errors(path, "read"):
        text = path.read_text()
    try:
        record = json.loads(text)
        for key in ("threshold", "step", "delta", "epsilon"):  # what readers use and print
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, int if key == "step" else (int, float)):
                raise ValueError(f"{key} is {value!r}, not a{'n integer' if key == 'step' else ' number'}")
        if not (math.isfinite(record["threshold"]) and record["threshold"] >= 0):  # NaN: no token would exit
            raise ValueError(f"threshold {record['threshold']} is not a number >= 0")
    except (ValueError, KeyError, TypeError) as e:
        why = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise RunError(f"{path} is not a readable exit calibration ({why}); rerun adaptive calibrate-exits") from None
    return record


def describe(record: dict) -> str:
    """One line: the certified threshold, or that none was, with the guarantee asked for."""
    asked = f"at delta {record['delta']:g}, epsilon {record['epsilon']:g} on step {record['step']}"
    if float(record["threshold"]) >= NO_EXITS:
        return f"no exit threshold certified {asked}: every token runs every block"
    return f"exit threshold {float(record['threshold']):g}, certified {asked}"


def for_step(workdir: str | Path, step: int) -> tuple[dict | None, str | None]:
    """(the calibration of checkpoint `step`, or None; a note when one exists for another step:
    its guarantee was measured on other weights, so it is not used)."""
    record = read(workdir)
    if record is None or int(record["step"]) == step:
        return record, None
    note = (
        f"{Path(workdir) / FILE} certifies step {record['step']}, not step {step}: not used "
        f"(rerun adaptive calibrate-exits)"
    )
    return None, note
