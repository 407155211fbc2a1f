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
CHECKSUM = "checksum"  # a checkpoint's Composite item (a folder in each step) holding {"sha256": ...}
CHECKPOINT_CONFIG = "config"  # in CHECKSUM: the run's config, for a rerun whose config.json was lost


class RunError(ValueError):
    """The workdir is not a usable run; the message is one line."""


def load_config(workdir: str | Path) -> config_lib.Config:
    path = Path(workdir) / "config.json"
    if not Path(workdir).exists():
        raise RunError(f"{workdir} does not exist")
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
        # as a run starts: a file without data.data_dir (saved before the field) reads the default
        # data folder, not the current one (where an eval would prepare the dataset again)
        cfg = config_lib.absolute_paths(config_lib.from_dict(saved))
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


def config_of_step(folder: Path) -> dict | None:
    """The config saved with checkpoint `folder` (as config.json holds it), or None where it has
    none (saved before configs were, or by a reader); read as a file, like saved_steps."""
    try:
        saved = json.loads((Path(folder) / CHECKSUM / "metadata").read_text())  # orbax's JsonSave
    except (OSError, ValueError):
        return None
    config = saved.get(CHECKPOINT_CONFIG) if isinstance(saved, dict) else None
    return config if isinstance(config, dict) else None


def newest_checkpoint_config(workdir: Path) -> dict | None:
    """The config saved with the run's newest checkpoint that holds one (config_of_step), or None."""
    for step in sorted(saved_steps(workdir), reverse=True):
        if (config := config_of_step(workdir / "checkpoints" / str(step))) is not None:
            return config
    return None


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


# The data settings that decide what an example of each dataset is; how many are drawn, their
# seed and where they are cached make no other task. Other names are TFDS datasets.
_TASK_KEYS = {"parity": ("parity_n",), "pystdlib": ("window", "text_dir"), "addition": ("addition_digits",)}
_BUILT_IN = ("parity", "digits", "mnist1d", "pystdlib", "addition")


def task_settings(cfg: config_lib.Config, split: str | None = None) -> dict:
    """The settings that make `cfg`'s task, e.g. {"name": "parity", "parity_n": 16}; with `split`,
    also the difficulty range that split is drawn from (parity draws validation like training,
    test from eval_difficulty: adaptive.data.parity's split_ranges), None resolved to all."""
    d = cfg.data
    keys = _TASK_KEYS.get(d.name, () if d.name in _BUILT_IN else ("image_key", "label_key"))
    out = {"name": d.name, **{k: getattr(d, k) for k in keys}}
    if d.name == "parity" and split is not None:
        drawn = d.eval_difficulty if split == "test" else d.train_difficulty
        out[f"{split} difficulty"] = tuple(drawn) if drawn else (1, d.parity_n)
    return out


def task_label(cfg: config_lib.Config, splits=()) -> str:
    """The task in a few words, for a table of runs of several, with the difficulty of each split
    in `splits` where it has one: "parity parity_n=16 validation difficulty=(1, 16)"."""
    settings = {}
    for split in splits or (None,):
        settings |= task_settings(cfg, split)
    name, *rest = settings.items()
    return " ".join([name[1], *(f"{k}={v}" for k, v in rest)])


def refuse_other_task(workdir, cfg: config_lib.Config, ref_workdir, ref: config_lib.Config, split: str) -> None:
    """A RunError naming the first setting where run `workdir`'s task on `split` differs from
    `ref_workdir`'s: their accuracies and compute are not on one scale."""
    mine, theirs = task_settings(cfg, split), task_settings(ref, split)
    for key in dict.fromkeys([*theirs, *mine]):
        if mine.get(key) != theirs.get(key):
            raise RunError(
                f"{workdir} has {key} {mine.get(key)!r} and {ref_workdir} {theirs.get(key)!r} on the {split} "
                "split: runs of different tasks are not compared; give runs of one task"
            )
