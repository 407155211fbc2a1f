"""A run's config.json: read back into a Config, with one-line errors that say how to recover.

A run priced in latency, cost or energy keeps its own copy of the cost model it was trained
under (RUN_COST_MODEL): `budget.cost_model` names a file other commands rewrite (`adaptive
calibrate` of the run it came from), and the run's budgets must not change under it. A config
read back points at that copy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from adaptive import config as config_lib
from adaptive.workdir.runinfo import json_problem

RUN_COST_MODEL = "budget_cost_model.json"


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
        cfg = config_lib.from_dict(saved)
    except config_lib.ConfigError as e:  # named as the file's, not the command line's
        raise RunError(f"{path}: {e}") from None
    return with_run_cost_model(cfg, workdir)


def with_run_cost_model(cfg: config_lib.Config, workdir: str | Path) -> config_lib.Config:
    """`cfg` with budget.cost_model at the run's own copy, where it has one."""
    copy = Path(workdir).resolve() / RUN_COST_MODEL
    if not cfg.budget.cost_model or not copy.is_file():
        return cfg
    return dataclasses.replace(cfg, budget=dataclasses.replace(cfg.budget, cost_model=str(copy)))


def damaged_config(path: Path, problem: str) -> RunError:
    """The one-line refusal for a config.json that does not parse, with the way to recover: the
    run's checkpoints are intact, only the record of the config that made them is not."""
    return RunError(
        f"{path} is corrupted ({problem}); restore it, or delete it and rerun adaptive train with the "
        f"run's --config and overrides (run.json records the command) to rewrite it and resume"
    )


def saved_steps(workdir: Path) -> list[int]:
    """The steps of the run's finished checkpoints. Orbax names a finished save by its step (a
    save in progress has a temporary name); read as names, since opening a CheckpointManager
    would start JAX's backends in a process that only looks (a sweep)."""
    folder = workdir / "checkpoints"
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()] if folder.is_dir() else []


def checkpoint_folder(workdir: Path) -> Path:
    """The run's checkpoints folder; a RunError if it has none yet."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        raise RunError(f"{workdir} has no checkpoint yet")
    return folder


# The data settings that decide what an example is (its source, size and difficulty); how many
# are drawn, their seed and where they are cached do not make another task.
TASK_KEYS = ("name", "parity_n", "window", "text_dir", "addition_digits", "eval_difficulty")


def refuse_other_task(workdir, cfg: config_lib.Config, ref_workdir, ref: config_lib.Config) -> None:
    """A RunError naming the first task setting where run `workdir` differs from `ref_workdir`:
    their accuracies and compute are not on one scale, so neither a table nor a baseline mixes them."""
    for key in TASK_KEYS:
        mine, theirs = getattr(cfg.data, key), getattr(ref.data, key)
        if mine != theirs:
            raise RunError(
                f"{workdir} has data.{key}={mine!r} and {ref_workdir} data.{key}={theirs!r}: "
                "runs of different tasks are not compared; give runs of one task"
            )
