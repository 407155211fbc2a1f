"""Helpers shared by tests: running the CLI in a subprocess and reading a run back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from adaptive import config as config_lib
from adaptive import data, steps
from adaptive.checkpoint import Checkpointer
from adaptive.metrics import read_jsonl
from adaptive.nn.models import build_model
from adaptive.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--config.logging.wandb=disabled", "--config.logging.progress=false"]


def train_command(workdir: Path, *overrides: str, config: str = "configs/parity.py:tiny") -> list[str]:
    return [
        sys.executable,
        "-m",
        "adaptive.cli",
        "train",
        "--config",
        str(ROOT / config),
        "--workdir",
        str(workdir),
        *QUIET,
        *overrides,
    ]


def run_train(
    workdir: Path, *overrides: str, config: str = "configs/parity.py:tiny", timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(workdir, *overrides, config=config), capture_output=True, text=True, timeout=timeout
    )


def final_state(workdir: Path) -> tuple[int, dict]:
    """The newest checkpoint of a run, restored as host numpy arrays."""
    cfg = config_lib.from_dict(__import__("json").loads((workdir / "config.json").read_text()))
    spec = data.prepare(cfg.data)
    from flax import nnx

    params = nnx.to_pure_dict(nnx.split(build_model(cfg, spec), nnx.Param)[1])
    like = steps.init_state(params, make_optimizer(cfg.optim, cfg.train.steps))
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        step, state, _ = ckpt.restore_latest(like)
    finally:
        ckpt.close()
    return step, jax.tree.map(np.asarray, state)


def metric_rows(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock `perf/` keys (the only ones allowed to differ)."""
    return [
        {k: v for k, v in row.items() if not k.startswith("perf/")} for row in read_jsonl(workdir / "metrics.jsonl")
    ]
