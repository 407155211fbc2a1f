"""A run's folder and the config that made it: which folders a run may train in, whether a
config continues the run a folder holds (what a resume may change, RESUMABLE_CHANGES), and the
files that record it (config.json, the cost model's copy)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from adaptive import config as config_lib
from adaptive.training.optim import warmup_length
from adaptive.workdir import runinfo
from adaptive.workdir.config_file import RUN_COST_MODEL, damaged_config, newest_checkpoint_config, saved_steps

log = logging.getLogger(__name__)

# Keys that may change between a run and its resumption; anything else means another run.
# (train.steps may only stay at or above the step the checkpoints reached: write_or_check_config.)
RESUMABLE_CHANGES = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "logging.",
    "mesh.",  # a run can resume on another mesh: checkpoints restore onto the new shardings
    "data.eval_split",  # only what periodic evals score; each eval line in metrics.jsonl names it
    "data.eval_examples",  # likewise: each eval line counts what it scored (eval/examples)
)


def refuse_a_folder_of_another_command(workdir: Path) -> None:
    """Folders the other commands write hold no config.json: a run's files must not mix with
    theirs (checked before the run touches the folder at all)."""
    if (workdir / "config.json").exists():
        return
    for marker, holds in (("meta.json", "an exported artifact"), ("summary.json", "a sweep's points")):
        if (workdir / marker).exists():
            raise config_lib.ConfigError(f"{workdir} holds {holds} ({marker}), not a run; give another --workdir")
    runs = sorted(p.parent.name for p in workdir.glob("*/config.json"))
    if runs:  # a sweep's or a reproduction's folder before its summary is written
        raise config_lib.ConfigError(f"{workdir} holds runs ({runs[0]}, ...), not a run; give another --workdir")


def refuse_a_folder_inside_a_run(workdir: Path) -> None:
    """A run's own folders (checkpoints, plots, ...) are its files: a run started inside one would
    mix with them, and deleting either run would take the other's files along."""
    for parent in workdir.parents:
        if (parent / "config.json").is_file() and (parent / "checkpoints").is_dir():
            raise config_lib.ConfigError(f"{workdir} is inside the run {parent}; give a --workdir outside it")


def as_saved(cfg: config_lib.Config) -> dict:
    """`cfg` as config.json (and each checkpoint) holds it."""
    return json.loads(json.dumps(config_lib.to_dict(cfg)))


def write_or_check_config(cfg: config_lib.Config, workdir: Path) -> None:
    """Saves DIR/config.json; on a rerun, refuses a config that would make it another run (checked
    against the config saved with the newest checkpoint where config.json was lost)."""
    path = workdir / "config.json"
    saved, lost = _saved_config(path, workdir), ""
    if saved is None and (saved := newest_checkpoint_config(workdir)) is not None:
        lost = f" ({path.name} is missing; its checkpoints were saved with that config)"
    change = None if saved is None else config_change(saved, cfg)
    if change is not None:
        raise config_lib.ConfigError(
            f"{workdir} holds a run with another config ({change}){lost}; use a new --workdir or the same config"
        )
    reached = max(saved_steps(workdir), default=0)
    if reached > cfg.train.steps:  # config.json would then say less than was trained
        raise config_lib.ConfigError(
            f"{workdir} is already trained to step {reached}, past train.steps={cfg.train.steps}; "
            f"give train.steps >= {reached} to go on, or a new --workdir"
        )
    before = _get(saved, "train.steps") if saved is not None else None
    if before not in (None, cfg.train.steps) and reached > 0:
        # a constant schedule changes too where its warm-up was cut to the run's length
        stretched = "schedule" if cfg.optim.schedule != "constant" else "warm-up"
        if stretched == "schedule" or warmup_length(cfg.optim, before) != warmup_length(cfg.optim, cfg.train.steps):
            log.warning(
                "train.steps changed from %s to %s: the %s learning-rate %s spans the new length from the "
                "resumed step on, so this run matches neither a %s- nor a %s-step run",
                before, cfg.train.steps, cfg.optim.schedule, stretched, before, cfg.train.steps,
            )  # fmt: skip
    runinfo.write_atomic(path, json.dumps(as_saved(cfg), indent=2) + "\n")


def keep_cost_model(cfg: config_lib.Config, workdir: Path) -> None:
    """Copies budget.cost_model into the run as it starts; on a resume the copy is kept, with a
    warning when the file it came from has changed since (recalibrated)."""
    if not cfg.budget.cost_model:
        return
    source, copy = Path(cfg.budget.cost_model), workdir / RUN_COST_MODEL
    with runinfo.file_errors(source, "read"):
        text = source.read_text()
    if not copy.exists():
        runinfo.write_atomic(copy, text)
    elif copy.read_text() != text:
        log.warning("%s changed since this run started; the run keeps the cost model it started with (%s)",
                    source, copy)  # fmt: skip


def config_change(saved: dict, cfg: config_lib.Config) -> str | None:
    """Where `cfg` makes another run than the saved config.json `saved` ("key: saved != new"),
    leaving aside what a run may change when it resumes (RESUMABLE_CHANGES); None: the same run."""
    current = as_saved(cfg)
    try:  # a run saved before a config field existed had that field's default (and relative paths)
        saved = json.loads(json.dumps(config_lib.to_dict(config_lib.absolute_paths(config_lib.from_dict(saved)))))
    except config_lib.ConfigError:
        pass  # a field since removed: compare as saved
    for key in _differences(saved, current):
        if not key.startswith(RESUMABLE_CHANGES):
            return f"{key}: {_get(saved, key)!r} != {_get(current, key)!r}"
    return None


def _saved_config(path: Path, workdir: Path) -> dict | None:
    """config.json as saved, or None if there is none. A damaged one is refused while checkpoints
    depend on it (resuming them under an unchecked config could silently make another run); with
    no checkpoint, nothing depends on it: it is renamed aside and written anew."""
    if not path.exists():
        return None
    try:
        with runinfo.file_errors(path, "read"):
            saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return saved
    except ValueError as e:
        problem, checkpoints = runinfo.json_problem(e), workdir / "checkpoints"
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            raise damaged_config(path, problem) from e
        aside = runinfo.set_aside(path)
        log.warning("%s is corrupted (%s) and no checkpoint depends on it; moved it to %s", path, problem, aside)
        return None


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, prefix + k + ".")
        elif x != y:
            out.append(prefix + k)
    return out


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree
