"""`adaptive sweep --config configs/X.py[:arg] --workdir DIR [--parallel N] [--dry-run]`.

A sweep is declared next to its config as plain Python: `get_sweep(arg) -> list[dict]`, each
dict a point of dotted config keys (`{"halting.tau": 1e-3, "seed": 1}`) applied on top of
`get_config(arg)`. Every point is validated before anything runs (its periodic evals must score
the validation split, since points are compared on them), then trained by `adaptive
train` in its own process and its own workdir `DIR/<index>-<slug>`, at most N at a time, with
one progress bar over the whole sweep's training steps.

Rerunning is safe and cheap: finished points are skipped, interrupted ones resume from their
checkpoints (train.py does that), failed ones are retried. A failing point is reported and the
others go on; a point whose folder holds a run its config cannot continue (another config, trained
past its steps) is refused before anything trains, which keeps the finished sweep's summary.
SIGTERM or Ctrl-C stops the running points cleanly (each saves a checkpoint);
each child also gets SIGTERM if the sweep itself dies, so no orphan keeps writing. The summary
(DIR/summary.csv, DIR/summary.json, a console table, DIR/pareto.png) is in sweep_summary.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adaptive import config as config_lib
from adaptive.config import ConfigError
from adaptive.experiments import sweep_folders
from adaptive.training.metrics import read_jsonl
from adaptive.training.parallel import ASSIGNED_DEVICES
from adaptive.workdir.config_file import saved_steps
from adaptive.workdir.runinfo import BUSY_EXIT, WorkdirError


@dataclass
class Point:
    index: int
    values: dict  # dotted config key -> value
    workdir: Path
    steps: int  # training steps of this point's config
    base: list[str] = field(default_factory=list)  # overrides given to the whole sweep
    status: str = "new"  # new | partial | done | failed | running (--dry-run also: conflict)
    slot: int = -1  # which device subset it runs on (local runner)
    detail: str = ""
    process: subprocess.Popen | None = field(default=None, repr=False)
    config: config_lib.Config | None = field(default=None, repr=False)  # the point's full config

    @property
    def name(self) -> str:
        return self.workdir.name

    @property
    def overrides(self) -> list[str]:
        return [*self.base, *(f"--config.{key}={_cli_value(value)}" for key, value in self.values.items())]


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(_cli_value, value)) if value else "[]"  # "" would read as one empty value
    return "None" if value is None else str(value)


def slug(values: dict) -> str:
    """A short, filesystem-safe name from a point's values: `tau0.001-seed1`."""
    parts = [f"{key.split('.')[-1]}{_cli_value(value)}" for key, value in values.items()]
    text = re.sub(r"[^A-Za-z0-9.=+-]+", "_", "-".join(parts)) or "default"
    return text[:60]


def load_points(spec: str, workdir: Path, base: list[str] = ()) -> list[Point]:
    """The sweep's points (with `base` overrides under each), each checked as a full config
    (unknown keys, bad values) before anything runs."""
    module, arg = config_lib.load_module(spec)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"config file {spec.partition(':')[0]!r} defines no get_sweep(arg)")
    sweep = config_lib.call(module, "get_sweep", f"{spec}: get_sweep", arg)
    if not isinstance(sweep, list) or not sweep or not all(isinstance(p, dict) for p in sweep):
        raise ConfigError(f"{spec}: get_sweep must return a non-empty list of dicts of config keys")
    _no_override_of_swept_keys(spec, sweep, base)
    base = _last_per_key(base)  # an experiment's own overrides, then the caller's: the caller's win
    points, seen = [], {}
    for index, values in enumerate(sweep):
        point = Point(index, dict(values), workdir / f"{index}-{slug(values)}", 0, list(base))
        try:
            cfg = config_lib.load(spec, point.overrides)
        except ConfigError as e:
            raise ConfigError(f"sweep point {index} ({point.name}): {e}") from None
        if cfg.data.eval_split != "validation":
            raise ConfigError(
                f"sweep point {index} ({point.name}): data.eval_split={cfg.data.eval_split!r}; a sweep's points "
                "are compared on their periodic evals, which must score 'validation' (the test split is read "
                "once, after the sweep: adaptive eval --split test)"
            )
        same = seen.setdefault(json.dumps(config_lib.to_dict(cfg), sort_keys=True), point)
        if same is not point:  # trained twice, then counted as two seeds of one config
            raise ConfigError(f"sweep points {same.index} and {index} are the same config ({point.name}); keep one")
        point.steps, point.config = cfg.train.steps, cfg
        points.append(point)
    return points


def _last_per_key(overrides: list[str]) -> list[str]:
    """`overrides` with each key once, at its last value (a training run refuses a key given twice
    with different values, as a sweep's layers may: an experiment's, then the caller's)."""
    last = {config_lib.override_key(item)[0]: item for item in overrides}
    return list(last.values())


def _no_override_of_swept_keys(spec: str, sweep: list[dict], base: list[str]) -> None:
    """An override of a key the sweep sets is refused: each point's own value is applied after
    it and wins, so the override would be dropped without a word."""
    swept = {key for values in sweep for key in values}
    for item in base:
        key = config_lib.override_key(item)[0]
        if key in swept:
            points = [i for i, values in enumerate(sweep) if key in values]
            which = "every point" if len(points) == len(sweep) else f"point(s) {', '.join(map(str, points))}"
            raise ConfigError(
                f"{item} overrides {key}, which {spec}'s get_sweep sets for {which}: the point's value would "
                "win and the override be dropped; remove it, or change the sweep"
            )


def refresh_status(point: Point) -> None:
    """done (a final eval at the last step), partial (a checkpoint to resume), running (another
    sweep's live process holds it), or new; a recorded failure stays until the point is rerun."""
    # a sweep's child (.sweep.pid), or any trainer, a hand-started `adaptive train` included
    # (.train.lock holds the pid of the last process to hold it)
    for lock in (point.workdir / ".sweep.pid", point.workdir / ".train.lock"):
        if lock.exists() and _alive(_pid_in(lock), point.workdir):
            point.status = "running"
            return
    try:
        finished = _finished(point)
    except WorkdirError as e:  # a damaged metrics.jsonl: this point's problem, not the sweep's
        point.status, point.detail = "failed", str(e)
        return
    if finished:
        point.status = "done"
    elif (point.workdir / "checkpoints").exists():
        point.status = "partial"
    elif point.status != "failed":
        point.status = "new"


def _finished(point: Point) -> bool:
    """A final eval, a checkpoint of the final step (its save may have failed after the eval was
    logged), and the run in the workdir is this point's (the sweep's config may have changed
    since: then `adaptive train` says how, when the point is run again)."""
    metrics = point.workdir / "metrics.jsonl"
    if not metrics.exists():
        return False
    if not any(r["split"] == "eval" and r["step"] >= point.steps for r in read_jsonl(metrics)):
        return False
    if max(saved_steps(point.workdir), default=0) != point.steps:  # past it: `adaptive train` refuses, in one line
        return False
    return point.config is None or sweep_folders.same_run(point)


def _pid_in(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):  # gone since, or cut short as it was written
        return 0


def _alive(pid: int, workdir: Path) -> bool:
    """Whether `pid` is a live trainer of `workdir`: after a reboot or a killed sweep, the pid a
    stale .sweep.pid names may belong to another process (on Linux, its command line says)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        if not raw:  # a zombie: it has ended, its parent has not reaped it yet
            return False
        command = raw.decode(errors="replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return True  # no /proc to ask: alive is all that is known
    given = [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--workdir"]
    return any((cwd / w).resolve() == workdir.resolve() for w in given)  # however each spelled it


def steps_done(point: Point) -> int:
    """The last step the point logged (0 when it has logged nothing)."""
    path = point.workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        for line in reversed(f.read().splitlines()):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError):
                continue
    return 0


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the sweep dies, even by SIGKILL (Linux), and save."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def device_env(devices: list[str], slot: int, per_point: int) -> dict:
    """The environment that gives a point its own accelerators: slot i of `per_point` ids each.
    JAX sees only those (CUDA_VISIBLE_DEVICES; the TPU runtime reads TPU_VISIBLE_CHIPS)."""
    mine = ",".join(devices[slot * per_point : (slot + 1) * per_point])
    return {"CUDA_VISIBLE_DEVICES": mine, "TPU_VISIBLE_CHIPS": mine, ASSIGNED_DEVICES: mine}


QUIET_CHILD = "--config.logging.progress=false"


def launch(spec: str, point: Point, env: dict | None = None) -> None:
    point.workdir.mkdir(parents=True, exist_ok=True)
    log = (point.workdir / "train.log").open("ab")
    command = [
        sys.executable,
        "-m",
        "adaptive.cli",
        "train",
        "--config",
        spec,
        "--workdir",
        str(point.workdir),
        # one progress bar, the sweep's, unless the overrides say otherwise
        *([] if any(o.startswith("--config.logging.progress=") for o in point.overrides) else [QUIET_CHILD]),
        *point.overrides,
    ]
    point.process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env={**os.environ, **(env or {})}
    )
    (point.workdir / ".sweep.pid").write_text(str(point.process.pid))
    point.status, point.detail = "running", ""


def collect(point: Point) -> bool:
    """True when the point's process has ended; records how."""
    code = point.process.poll()
    if code is None:
        return False
    pid_file = point.workdir / ".sweep.pid"
    with contextlib.suppress(OSError):  # another sweep's child may hold the point: its file stays
        if pid_file.read_text().strip() == str(point.process.pid):
            pid_file.unlink()
    point.process = None
    if code == 0:
        point.status = "done"
    elif code == BUSY_EXIT:  # another sweep (or a hand-started train) got there first
        point.status, point.detail = "running", "trained by another process"
    elif code in (128 + 15, 128 + 2, -15, -2):  # SIGTERM from the sweep, or a terminal's Ctrl-C: both save
        # (a child the signal stopped before Python's handlers were in place reports it as -signum):
        # done if the signal came after the final eval and save, new if before a first checkpoint
        point.status, point.detail = "new", ""
        refresh_status(point)
        if point.status != "done" and not point.detail:
            point.detail = "interrupted"
    else:
        point.status, point.detail = "failed", f"exit {code}: {_last_error(point)}"
    return True


def _last_error(point: Point) -> str:
    lines = (point.workdir / "train.log").read_text(errors="replace").strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][-300:]


ELSEWHERE_POLL_S = 2.0  # how often a point another process trains is looked at (it reads metrics.jsonl)


def run(spec: str, points: list[Point], parallel: int, devices: list[str] = (), per_point: int = 0) -> list[Point]:
    """Trains every point not yet done, at most `parallel` at a time, with one progress bar;
    with `devices` and `per_point`, each running point gets its own `per_point` of them."""
    if parallel < 1:  # no point would ever start
        raise ConfigError(f"--parallel must be at least 1; got {parallel}")
    if per_point and len(devices) < parallel * per_point:
        raise ConfigError(
            f"--parallel {parallel} x --devices-per-point {per_point} needs {parallel * per_point} devices; "
            f"--devices lists {len(devices)}"
        )
    from tqdm import tqdm

    for p in points:
        refresh_status(p)
    todo = [p for p in points if p.status in ("new", "partial", "failed")]
    skipped = [p for p in points if p.status == "done"]
    if skipped:
        print(f"skipping {len(skipped)} finished point(s): {', '.join(p.name for p in skipped)}")
    # Points another process trains: waited for, so that this sweep's summary and exit status are
    # the whole sweep's, and taken over if that process stops before finishing them.
    elsewhere = [p for p in points if p.status == "running"]
    for p in elsewhere:
        print(f"point {p.name} is being trained by another process: waiting for it")
    stop = {"signal": None}
    handler = lambda signum, frame: stop.update(signal=signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    # On a terminal only (disable=None): in a log file the per-point lines below tell the story.
    bar = tqdm(total=sum(p.steps for p in todo), unit="step", desc="sweep", dynamic_ncols=True, disable=None)
    base = {p.index: steps_done(p) for p in todo}
    queue, running, stopping, looked, started = list(todo), [], False, 0.0, set()
    try:
        while queue or running or elsewhere:
            if elsewhere and time.monotonic() - looked > ELSEWHERE_POLL_S and not stop["signal"]:
                looked = time.monotonic()
                for point in _settled_elsewhere(elsewhere):
                    queue.append(point)
                    if point.index not in base:  # counted on the bar from here
                        todo.append(point)
                        base[point.index] = steps_done(point)
                        bar.total += point.steps
            while queue and len(running) < parallel and not stop["signal"]:
                point = queue.pop(0)
                refresh_status(point)  # another sweep of this folder may have taken it since
                if point.status in ("running", "done"):
                    tqdm.write(f"point {point.name}: {point.status} (by another process)")
                    if point.status == "running":
                        elsewhere.append(point)
                    continue
                slot = min(set(range(parallel)) - {p.slot for p in running})  # a free device subset
                point.slot = slot
                launch(spec, point, device_env(list(devices), slot, per_point) if per_point else None)
                running.append(point)
                started.add(point.index)  # said at every start: without a terminal the bar is off
                tqdm.write(
                    f"point {point.name}: training ({len(started)} of {len(todo)}; log: {point.workdir}/train.log)"
                )
            if stop["signal"] and not stopping:  # once: the running points save and exit 143
                stopping = True
                queue.clear()
                elsewhere.clear()  # the other process's to finish
                for point in running:
                    point.process.send_signal(signal.SIGTERM)
            time.sleep(0.25)
            for point in [p for p in running if collect(p)]:
                running.remove(point)
                tqdm.write(f"point {point.name}: {point.status}{' - ' + point.detail if point.detail else ''}")
                if point.status == "running" and not stop["signal"]:  # another process got there first
                    elsewhere.append(point)
            progress = sum(min(steps_done(p), p.steps) - base[p.index] for p in todo)
            if progress != bar.n:
                bar.n = progress
                bar.set_postfix(running=len(running), left=len(queue))
    finally:
        bar.close()
        for point in running:  # only on an unexpected error: do not leave children behind
            if point.process is not None and point.process.poll() is None:
                point.process.send_signal(signal.SIGTERM)
                point.process.wait(timeout=120)
        for s, h in previous.items():
            signal.signal(s, h)
    if stop["signal"]:
        raise SweepInterrupted(stop["signal"])
    return points


def _settled_elsewhere(elsewhere: list[Point]) -> list[Point]:
    """Removes from `elsewhere` the points whose other process has ended, each said in one line:
    those it finished stay done; those it left unfinished are returned, for this sweep to train."""
    from tqdm import tqdm

    taken = []
    for point in list(elsewhere):
        refresh_status(point)
        if point.status == "running":
            continue
        elsewhere.remove(point)
        if point.status == "done":
            tqdm.write(f"point {point.name}: done (by another process)")
        else:
            tqdm.write(f"point {point.name}: {point.status}, left by the process that trained it: resuming it here")
            taken.append(point)
    return taken


class SweepInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: the running points saved checkpoints and stopped. `signum` gives the
    command its exit status (128 + signum, as the shell reports a signal)."""

    def __init__(self, signum: int):
        super().__init__(f"sweep stopped by signal {signum}; rerun the same command to resume")
        self.signum = int(signum)
