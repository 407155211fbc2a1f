"""DIR/run.json: what produced a run (package versions, git commit, seed, devices, starts)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax

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
    path = workdir / "run.json"
    info = (
        json.loads(path.read_text())
        if path.exists()
        else {
            "seed": seed,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "git_commit": git_commit(),
            "starts": [],
        }
    )
    info["starts"].append(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "resumed_from_step": resumed_from,
            "devices": [str(d) for d in jax.devices()],
            "git_commit": git_commit(),
        }
    )
    path.write_text(json.dumps(info, indent=2) + "\n")
