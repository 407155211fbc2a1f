"""DIR/run.json: what produced a run (package versions, git commit, seed, devices, starts).

Also the helpers every writer of a workdir shares: an OSError on one of its files becomes a
one-line `WorkdirError` naming the file, files are replaced atomically (a kill never leaves one
half written), and a damaged file is renamed aside, never deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class WorkdirError(RuntimeError):
    """A file of the workdir cannot be written or read (full disk, read-only, not a folder)."""


class WorkdirBusy(WorkdirError):
    """Another live process is training in the workdir (`adaptive train` exits with BUSY_EXIT)."""


BUSY_EXIT = 75  # EX_TEMPFAIL: try again later; `adaptive sweep` reads it as "trained elsewhere"


@contextlib.contextmanager
def sole_trainer(workdir: Path) -> Iterator[None]:
    """Holds DIR/.train.lock (an exclusive flock, with this process's pid in it) while a run
    trains: two trainers of one folder would interleave their checkpoints and metrics. The
    kernel lets go when the process ends, however it ends, so a killed run leaves no lock."""
    path = workdir / ".train.lock"
    with file_errors(path):
        lock = open(path, "a+")  # noqa: SIM115 -- held for the whole run
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise WorkdirBusy(
                f"{workdir} is being trained by another process (pid {holder}); wait for it to end or stop it"
            ) from None
        except OSError as e:  # a filesystem without flock (some network and FUSE mounts): train unguarded
            log.warning("%s cannot be locked (%s): nothing stops a second trainer of this folder", path, e)
        else:
            with file_errors(path):
                lock.seek(0)
                lock.truncate()
                lock.write(f"{os.getpid()}\n")
                lock.flush()
        yield
    finally:
        lock.close()


@contextlib.contextmanager
def file_errors(path: str | Path, action: str = "write") -> Iterator[None]:
    """Turns an OSError inside the block into `cannot ACTION PATH: <reason>` (one line)."""
    try:
        yield
    except OSError as e:
        raise WorkdirError(f"cannot {action} {path}: {e.strerror or e}") from e


def check_writable_folder(path: Path) -> None:
    """A WorkdirError (one line) where folder `path` could not be made or written (a read-only
    mount, a file in its place), checked without making it: asked before long work whose results
    would be written there and lost."""
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"cannot write {path}: {os.strerror(errno.EEXIST)}")
    where = path if path.exists() else path.parent
    if not os.access(where, os.W_OK):
        raise WorkdirError(f"cannot write {path}: {os.strerror(errno.EROFS if _read_only(where) else errno.EACCES)}")


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def write_atomic(path: Path, text: str) -> None:
    """Replaces `path` by `text` in one rename, so that a kill or a full disk leaves the old file
    (and of two processes writing it at once, one's whole file: each writes its own temporary)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with file_errors(path):
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def json_problem(e: ValueError) -> str:
    """What is wrong with a file that does not parse, in a few words."""
    if isinstance(e, json.JSONDecodeError):
        return f"JSON error at line {e.lineno} column {e.colno}: {e.msg}"
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(e)


def set_aside(path: Path) -> Path:
    """Renames a damaged file to `NAME.corrupt-<n>` (the first free n) and returns the new path."""
    n = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    with file_errors(aside):
        path.rename(aside)
    return aside


PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "array-record",
    "grain",
    "wandb",
    "numpy",
    "ml-collections",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the source tree `adaptive` was imported from, with `+dirty` if modified."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def record_start(workdir: Path, *, seed: int, resumed_from: int | None) -> None:
    """Writes run.json on the first start and appends one entry per (re)start."""
    import jax  # here: the metrics writer imports this module's file helpers without needing JAX

    path = workdir / "run.json"
    info = _read_record(path) or {
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "starts": [],
    }
    info["starts"].append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "resumed_from_step": resumed_from,
            "devices": [str(d) for d in jax.devices()],
            "git_commit": git_commit(),
        }
    )
    write_atomic(path, json.dumps(info, indent=2) + "\n")


def _read_record(path: Path) -> dict | None:
    """run.json as saved, or None when there is none or it is damaged. A damaged one is renamed
    aside and a fresh one started: it records provenance, not state, so it never blocks a resume."""
    if not path.exists():
        return None
    try:
        with file_errors(path, "read"):
            info = json.loads(path.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("starts"), list):
            raise ValueError("not a run record")
        return info
    except ValueError as e:
        aside = set_aside(path)
        log.warning("%s is corrupted (%s); moved it to %s and started a new one", path, json_problem(e), aside)
        return None
