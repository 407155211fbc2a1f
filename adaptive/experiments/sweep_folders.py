"""Whether a sweep's folders hold runs its points continue: checked before anything trains.

A point's run lives in DIR/<index>-<slug>. Rerunning a sweep resumes each point from its folder,
which goes wrong in two ways that `adaptive train` alone would only find point by point, after
the sweep had started (and its summary replaced the finished one): the run in a point's folder
is not the point's (another config, trained past its steps, a damaged config.json that its
checkpoints depend on), or a point's run sits in another folder (points are named by their
place in get_sweep, so inserting or removing one renames those after it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from adaptive.config import ConfigError
from adaptive.training.run_folder import config_change
from adaptive.workdir.config_file import newest_checkpoint_config, saved_steps

if TYPE_CHECKING:
    from adaptive.experiments.sweep import Point


def refuse_a_run_or_an_artifact(workdir: Path, flag: str, holds: str) -> None:
    """A folder of many runs (`holds` them) is refused where it is one run or an exported
    artifact: its points' folders and summary files would be mixed into it."""
    for marker, what in (("config.json", "a training run"), ("metrics.jsonl", "a training run"),
                         ("meta.json", "an exported artifact")):  # fmt: skip
        if (workdir / marker).exists():
            raise ConfigError(f"{flag} {workdir} is {what} ({marker}); give {holds} a folder of its own")


def saved_config(folder: Path) -> dict | None:
    """The folder's config.json, or None: none there, or damaged (`adaptive train` refuses or
    rewrites a damaged one, in one line)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def same_run(point: Point) -> bool:
    """Whether the point's folder holds a run of the point's config (resumable changes aside)."""
    saved = saved_config(point.workdir)
    return saved is not None and config_change(saved, point.config) is None


def config_conflict(point: Point) -> str | None:
    """Why `adaptive train` would refuse the point in its folder: the run there has another config
    ("key: saved != new", resumable changes aside), is trained past the point's steps, or its
    config.json is damaged while checkpoints depend on it; None when there is no run there or it
    is this point's."""
    saved, reached = saved_config(point.workdir), max(saved_steps(point.workdir), default=0)
    if saved is None:  # none, or damaged: train rewrites a damaged one unless checkpoints depend on it
        damaged = (point.workdir / "config.json").exists() and reached > 0
        if damaged:
            return "its config.json is damaged and its checkpoints depend on it: restore it"
        if (saved := newest_checkpoint_config(point.workdir)) is None:  # config.json lost: its checkpoints say
            return None
    if reached > point.config.train.steps:
        return f"trained to step {reached}, past train.steps={point.config.train.steps}: give train.steps >= {reached}"
    return config_change(saved, point.config)


def moved_runs(points: list[Point], chosen: list[Point]) -> dict[int, Path]:
    """{index: folder} for the chosen points with no run in their own folder whose config a
    folder that no point owns holds a run of (they would train again beside it)."""
    if not chosen or not chosen[0].workdir.parent.is_dir():
        return {}
    owned = {p.workdir.name for p in points}
    others = [d for d in sorted(chosen[0].workdir.parent.iterdir()) if d.is_dir() and d.name not in owned]
    saved = [(d, c) for d in others if (c := saved_config(d)) is not None]
    moved = {}
    for point in chosen:
        if point.config is None or (point.workdir / "config.json").exists():
            continue
        found = next((folder for folder, config in saved if _same_point(config, point)), None)
        if found is not None:  # each folder is one point's
            moved[point.index] = found
            saved = [(d, c) for d, c in saved if d != found]
    return moved


def _same_point(saved: dict, point: Point) -> bool:
    """A run of the point's config, its length included (a sweep over train.steps would otherwise
    match any of its lengths: config_change lets a resume change it)."""
    steps = (saved.get("train") or {}).get("steps")
    return steps == point.config.train.steps and config_change(saved, point.config) is None


def conflicts(points: list[Point], chosen: list[Point]) -> dict[int, tuple[str, str]]:
    """{index: (why, for --dry-run's detail; the refusal: what is wrong, then what to do)} for the
    chosen points whose folders would not continue their runs."""
    found = {
        p.index: (
            c,
            f"holds a run this config cannot continue ({c}); use a new --workdir, or the config it was run with",
        )
        for p in chosen
        if (c := config_conflict(p)) is not None
    }
    for index, folder in moved_runs(points, chosen).items():
        found[index] = (
            f"its run is in {folder.name}",
            f"has no run, but {folder.name} holds one of its config (points are named by their place in get_sweep: "
            f"a point inserted or removed renames those after it); rename {folder.name} to "
            f"{points[index].workdir.name} to keep its training, or add new points at the end",
        )
    return found


def stretched_schedules(chosen: list[Point]) -> list[str]:
    """A note per chosen point whose checkpoints resume under another train.steps with a decaying
    learning rate: the schedule then spans the new length from the resumed step on, so the run
    matches neither length's fresh run (each point's train.log says so too; this says it here)."""
    notes = []
    for point in chosen:
        saved = saved_config(point.workdir)
        before = ((saved or {}).get("train") or {}).get("steps")
        if point.config is None or before in (None, point.config.train.steps) or not saved_steps(point.workdir):
            continue  # no run, the same length, or nothing trained yet to resume
        if point.config.optim.schedule != "constant":
            notes.append(
                f"point {point.name}: train.steps {before} -> {point.config.train.steps} changes its "
                f"{point.config.optim.schedule} learning-rate schedule from the resumed step on; "
                "it will match neither length's fresh run"
            )
    return notes
