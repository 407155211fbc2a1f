"""Helpers shared by tests: running the CLI in a subprocess and reading a run back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from adaptive.training.metrics import read_jsonl
from adaptive.training.resume import restore_state

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--config.logging.wandb=disabled", "--config.logging.progress=false"]

# JAX times compiling a program, or loading it from the persistent compilation cache
# (tests/conftest.py), under this event: either counts. Registered once, here.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILES = {"count": 0}
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *args, **kwargs: COMPILES.update(count=COMPILES["count"] + (name == COMPILE_EVENT))
)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adaptive.cli", *args]


def train_command(workdir: Path, *overrides: str, config: str = "configs/parity.py:tiny") -> list[str]:
    return cli("train", "--config", str(ROOT / config), "--workdir", str(workdir), *QUIET, *overrides)


def run_train(
    workdir: Path, *overrides: str, config: str = "configs/parity.py:tiny", timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(workdir, *overrides, config=config), capture_output=True, text=True, timeout=timeout
    )


def final_state(workdir: Path) -> tuple[int, dict]:
    """The newest checkpoint of a run, restored as host numpy arrays."""
    run, state = restore_state(workdir)
    return run.step, jax.tree.map(np.asarray, state)


def metric_rows(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock `perf/` keys (the only ones allowed to differ)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("perf/")} for row in read_jsonl(workdir / "metrics.jsonl")
    ]


def train_tiny(workdir: Path, steps: int, config: str = "configs/parity.py:tiny", overrides: tuple = ()):
    """Trains `config` for `steps` steps in-process, one eval and checkpoint at the end; its Config."""
    import dataclasses

    from adaptive import config as config_lib
    from adaptive.training.train import train_and_evaluate

    cfg = config_lib.load(str(ROOT / config), [*QUIET, *overrides])
    train = dataclasses.replace(cfg.train, steps=steps, eval_every=steps, checkpoint_every=steps)
    cfg = dataclasses.replace(cfg, train=train)
    train_and_evaluate(cfg, workdir)
    return cfg


def stopped_clock(controller):
    """`controller` with its clock stopped, so that no point goes a horizon without running: a
    test that sets a point's estimates gets the plan they make, never a probe row
    (Controller._probe) however slow this machine is between the estimates and the request."""
    now = controller.clock()
    controller.clock = lambda: now
    controller._ran_at = dict.fromkeys(controller._ran_at, now)  # as though every point had just run
    return controller
