"""A run's config.json: read back into a Config, with one-line errors that say how to recover."""

from __future__ import annotations

import json
from pathlib import Path

from adaptive import config as config_lib
from adaptive.workdir.runinfo import json_problem


class RunError(ValueError):
    """The workdir is not a usable run; the message is one line."""


def load_config(workdir: str | Path) -> config_lib.Config:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise RunError(f"{workdir} is not a training run (no config.json)")
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise damaged_config(path, json_problem(e)) from e
    try:
        return config_lib.from_dict(saved)
    except config_lib.ConfigError as e:  # named as the file's, not the command line's
        raise RunError(f"{path}: {e}") from None


def damaged_config(path: Path, problem: str) -> RunError:
    """The one-line refusal for a config.json that does not parse, with the way to recover: the
    run's checkpoints are intact, only the record of the config that made them is not."""
    return RunError(
        f"{path} is corrupted ({problem}); restore it, or delete it and rerun adaptive train with the "
        f"run's --config and overrides (run.json records the command) to rewrite it and resume"
    )


def checkpoint_folder(workdir: Path) -> Path:
    """The run's checkpoints folder; a RunError if it has none yet."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        raise RunError(f"{workdir} has no checkpoint yet")
    return folder
