"""Checkpoints: the only module that imports orbax.

A checkpoint holds the train state (a pytree of arrays), the data pipeline's position (JSON) and
a SHA-256 of both, saved together under one step. orbax writes into a temporary folder and
renames it when done, so a process killed mid-save (or a save that fails on a full disk) leaves
the previous checkpoint as the latest complete one. orbax checks no content: a flipped bit in an
array file restores without complaint, so the checksum is recomputed on every restore. A step
that fails to restore or to match its checksum is unusable; the next older one is tried, so a run
never loses its last good checkpoint to a bad newer one. Training sets such a step aside (renamed,
never deleted) so that it saves that step again; readers leave the run as they found it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from adaptive.workdir.config_file import CHECKPOINT_CONFIG, CHECKSUM
from adaptive.workdir.runinfo import WorkdirError

log = logging.getLogger(__name__)

ROTATED_RETRIES = 3  # a reader's new reads when a trainer rotated the steps it listed (_newest_usable)
PARAMS_SHA = "params_sha256"  # in CHECKSUM: the params subtree alone, for params-only readers
# Files of a step that orbax needs to read it and names obscurely when they are missing (a
# missing tree metadata reads as a "pytree structure error"): checked first, by name.
_STATE_INDEX = "state/manifest.ocdbt"  # the array store's index: every read needs it
_FULL_RESTORE_NEEDS = ("state/_METADATA", _STATE_INDEX, "data/metadata")
_FAILED_SAVES: list[BaseException] = []  # kept until exit: see _settle_failed_save


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (or none in the folder can); the message is one line."""


def newest_step(directory: Path) -> int | None:
    """The newest step listed in checkpoint folder `directory` (what a reader restores first), or
    None where it has none; read without restoring anything."""
    if not Path(directory).is_dir():
        return None
    ckpt = Checkpointer(directory, keep=1, create=False)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, create: bool = True, config: dict | None = None):
        """`config`: saved with each checkpoint (read back by config_file.config_of_step)."""
        self.directory = Path(directory).resolve()
        self._config = config
        # Saves are synchronous: the train step donates its state buffers, and a save must have
        # finished reading them before the next step reuses the memory.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=create)
        try:
            if create:  # here, not at the first save: a folder that cannot be made stops the run before training
                self.directory.mkdir(parents=True, exist_ok=True)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
            self._reader: ocp.CheckpointManager | None = None
        except OSError as e:
            raise WorkdirError(f"cannot write {self.directory}: {e.strerror or e}") from e

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        if step in self._manager.all_steps():
            return  # already saved (e.g. the final step after a SIGTERM at the same step)
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data_state),
            CHECKSUM: ocp.args.JsonSave(
                {"sha256": state_digest(state, data_state), PARAMS_SHA: state_digest(state["params"], {})}
                | ({CHECKPOINT_CONFIG: self._config} if self._config is not None else {})
            ),
        }
        with _reported_by_us():
            try:
                self._manager.save(step, args=ocp.args.Composite(**items), force=True)
            except Exception as e:
                reason = _io_reason(e)
                if reason is None:
                    raise  # not the disk: a bug that deserves its traceback
                _settle_failed_save(e)
                raise WorkdirError(f"cannot write {self.directory / str(step)}: {reason}") from e

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """Restores `step` into the structure, shapes, dtypes and shardings of `like` (a state
        saved on one mesh restores onto another) and checks it against its checksum."""
        abstract = _abstract(like)
        folder = self.directory / str(step)
        _check_parts(folder, _FULL_RESTORE_NEEDS)
        items = {"state": ocp.args.StandardRestore(abstract), "data": ocp.args.JsonRestore()}
        verified = self._has_checksum(folder)  # checkpoints saved before checksums have none
        if verified:
            items[CHECKSUM] = ocp.args.JsonRestore()
        try:
            with _reported_by_us():
                out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any failure means "this one is unusable"
            raise CheckpointError(f"checkpoint {folder} cannot be restored ({_first_line(e)})") from e
        if not verified:
            log.warning("checkpoint %s has no checksum (saved by an older version); restored unverified", folder)
        elif state_digest(out["state"], out["data"]) != _saved_digest(out[CHECKSUM]):
            raise CheckpointError(f"checkpoint {folder} is corrupt (its content does not match its checksum)")
        return out["state"], out["data"]

    def restore_params(self, step: int, like: Any) -> Any:
        """Only the `params` subtree of `step` (an orbax partial restore: the optimizer state is
        never read), into the structure of `like` and checked against the params' own checksum."""
        abstract = {"params": _abstract(like)}
        folder = self.directory / str(step)
        _check_parts(folder, (_STATE_INDEX,))  # the partial read needs no tree metadata
        items = {"state": ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract), partial_restore=True)}
        verified = self._has_checksum(folder)
        if verified:
            items[CHECKSUM] = ocp.args.JsonRestore()
        try:
            with _reported_by_us():
                out = self._params_reader().restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any failure means "this one is unusable"
            raise CheckpointError(f"checkpoint {folder} cannot be restored ({_first_line(e)})") from e
        params = out["state"]["params"]
        saved = out[CHECKSUM].get(PARAMS_SHA) if verified and isinstance(out[CHECKSUM], dict) else None
        if saved is None:
            log.warning(
                "checkpoint %s has no checksum of its params (saved by an older version); read unverified", folder
            )
        elif state_digest(params, {}) != saved:
            raise CheckpointError(f"checkpoint {folder} is corrupt (its content does not match its checksum)")
        return params

    def _has_checksum(self, folder: Path) -> bool:
        """Whether `folder` has its checksum; a step without one where an earlier step of the run
        has one was not saved by an older version, but lost it (a damaged copy): refused. (A run
        resumed by a version with checksums has earlier steps without one: those stay readable.)"""
        if (folder / CHECKSUM).is_dir():
            return True
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {folder} is gone (removed since it was listed)")
        earlier = [p for p in self.directory.iterdir() if p.name.isdigit() and int(p.name) < int(folder.name)]
        if any((p / CHECKSUM).is_dir() for p in earlier):
            raise CheckpointError(f"checkpoint {folder} has lost its checksum (the run's earlier checkpoints have one)")
        return False

    def _params_reader(self) -> ocp.CheckpointManager:
        """A manager of its own for partial reads: a manager binds each item to the handler of its
        first save or restore, and the partial read needs the PyTree handler for `state`."""
        if self._reader is None:
            options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False)
            self._reader = ocp.CheckpointManager(self.directory, options=options)
        return self._reader

    def restore_latest(self, like: Any, *, set_aside: bool = False) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores, or None if the folder has none.

        With `set_aside`, the unusable newer steps are renamed out of orbax's sight, once an older
        one has restored: a failure of every step (a changed model, say) renames nothing.
        """
        found = self._newest_usable(lambda step: self.restore(step, like), set_aside)
        return None if found is None else (found[0], *found[1])

    def restore_latest_params(self, like: Any) -> tuple[int, Any] | None:
        """(step, params) of the newest checkpoint whose params restore, or None if there is none."""
        return self._newest_usable(lambda step: self.restore_params(step, like), set_aside=False)

    def _newest_usable(self, restore, set_aside: bool):
        for attempt in range(ROTATED_RETRIES + 1):
            steps = self.steps()
            failed: list[tuple[int, str]] = []
            for step in reversed(steps):
                try:
                    restored = restore(step)
                except CheckpointError as e:
                    failed.append((step, str(e)))
                    continue
                for bad, reason in failed:
                    if set_aside:
                        log.warning("%s; moved it to %s, resuming from step %d", reason, self._set_aside(bad), step)
                    else:
                        log.warning("%s; using step %d", reason, step)
                return step, restored
            if not steps:
                return None
            # A reader beside a running trainer: the steps it listed may have been rotated out while
            # it read them (their folders gone). Listed anew and read again; a trainer never retries.
            if not set_aside and attempt < ROTATED_RETRIES:
                for manager in (self._manager, self._reader):
                    if manager is not None:
                        manager.reload()
                if self.steps() != steps:
                    continue
            reasons = "; ".join(reason for _, reason in failed)
            raise CheckpointError(f"no checkpoint in {self.directory} can be restored: {reasons}")
        raise AssertionError("unreachable")

    def _set_aside(self, step: int) -> Path:
        """Renames step's folder to `corrupt-STEP-TIME` beside it (orbax lists only step numbers)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.directory / f"corrupt-{step}-{stamp}"
        n = 1
        while target.exists():
            target, n = self.directory / f"corrupt-{step}-{stamp}-{n}", n + 1
        if jax.process_index() == 0:
            try:
                (self.directory / str(step)).rename(target)
            except OSError as e:
                raise WorkdirError(f"cannot write {target}: {e.strerror or e}") from e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"adaptive-set-aside-{step}")
        self._manager.reload()  # forget the step, so that it is saved again
        return target

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        if self._reader is not None:
            self._reader.close()


def _abstract(like: Any) -> Any:
    """Shapes, dtypes and shardings of `like`'s arrays (host arrays land on the default device)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), like
    )


def _check_parts(folder: Path, parts: tuple[str, ...]) -> None:
    """Refuses a step missing a file orbax needs, naming it (orbax's own error does not). A step
    whose whole folder is gone is left to the checksum check, which says so."""
    if not folder.is_dir():
        return
    missing = [part for part in parts if not (folder / part).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is damaged: {', '.join(missing)} missing")


def _restore_args(abstract: Any) -> Any:
    return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape), abstract)


def state_digest(state: Any, data_state: dict) -> str:
    """SHA-256 of every array of `state` (path, dtype, shape and bytes, in tree order) and of the
    data position. Host values, so a state restored onto another mesh has the same digest."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        array = np.ascontiguousarray(_host_array(leaf))
        h.update(f"{jax.tree_util.keystr(path)} {array.dtype.str} {array.shape}\n".encode())
        h.update(array.tobytes())
    h.update(json.dumps(data_state, sort_keys=True).encode())
    return h.hexdigest()


def _saved_digest(item: Any) -> str | None:
    return item.get("sha256") if isinstance(item, dict) else None


def _host_array(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # spread over processes
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))


def _io_reason(e: BaseException) -> str | None:
    """The OS's words for a failed write, or None if `e` is no I/O failure. tensorstore reports
    one as a ValueError ending in `[os_error_code='28']`."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    match = re.search(r"os_error_code='?(\d+)", str(e))
    return os.strerror(int(match.group(1))) if match else None


def _first_line(e: BaseException) -> str:
    """The error's first line, and its root cause's where that says more: orbax wraps a
    TensorStore failure (which file, what is wrong with it) in a line that ends in a repr."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = re.split(r" See full TensorStore details| \[tensorstore_spec=", first)[0]
    root, seen = e, {id(e)}
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
        if id(root) in seen:  # a chain that loops back
            break
        seen.add(id(root))
    cause = (str(root).strip().splitlines() or [""])[0]
    return (first if root is e or not cause or cause in first else f"{first}: {cause}")[:300]


def _settle_failed_save(error: BaseException) -> None:
    """A failed save leaves writes in flight in orbax's threads: wait for them (milliseconds), or
    they fail at exit with a traceback each. Its error is kept until exit: its frames hold
    tensorstore writes that report (to a closed event loop) when freed."""
    _FAILED_SAVES.append(error)
    try:
        from orbax.checkpoint._src.futures.future import _SignalingThread
    except ImportError:  # another orbax: no threads that we know of
        return
    deadline = time.monotonic() + 30.0
    for thread in threading.enumerate():
        if isinstance(thread, _SignalingThread):
            threading.Thread.join(thread, max(deadline - time.monotonic(), 0))  # its own join re-raises


@contextlib.contextmanager
def _reported_by_us() -> Iterator[None]:
    """A failed save or restore is reported by its caller in one line, so what orbax and
    tensorstore print about it is dropped: ERROR records with a traceback through their code
    (orbax's worker threads; asyncio's "Task exception was never retrieved"), 'Event loop is
    closed' from reads and writes that end after orbax closed its event loop, and the exceptions
    of orbax's read coroutines that nobody awaits any more (or that never started). Those may
    come until exit, long after the call (as the coroutines are collected): once a call fails,
    the filters stay, each narrowed to orbax's and tensorstore's own."""
    if _FILTERED:  # a call around this one, or one that failed, filters already
        yield
        return
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "asyncio")]
    for logger in loggers:
        logger.addFilter(_drop_error_tracebacks)
    previous_hook, sys.unraisablehook = sys.unraisablehook, _orbax_unraisable(sys.unraisablehook)
    _FILTERED.append(True)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        # its read coroutines may be collected never started, each warned of at exit
        warnings.filterwarnings("ignore", r"coroutine '_(read|write)_array\w*' was never awaited", RuntimeWarning)
        raise
    finally:
        if not (failed or _FAILED_SAVES):
            _FILTERED.clear()
            for logger in loggers:
                logger.removeFilter(_drop_error_tracebacks)
            sys.unraisablehook = previous_hook


_FILTERED: list[bool] = []  # non-empty while orbax's reports are filtered (for good once a call failed)


def _drop_error_tracebacks(record: logging.LogRecord) -> bool:
    """False for an ERROR record of orbax's or tensorstore's failure (raised in their code);
    other code's errors on the same loggers pass."""
    if record.levelno < logging.ERROR or not record.exc_info or record.exc_info[2] is None:
        return True
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(record.exc_info[2])]
    return not any("orbax" in f or "tensorstore" in f for f in files)


def _orbax_unraisable(previous_hook):
    def hook(unraisable) -> None:
        closed_loop = (
            isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
        )
        code = getattr(unraisable.object, "cr_code", None)  # a coroutine collected unfinished
        orbax_read = code is not None and "orbax" in code.co_filename
        if not (closed_loop or orbax_read or (_FAILED_SAVES and sys.is_finalizing())):
            previous_hook(unraisable)

    return hook
