"""Reading a training run back from its workdir: its config, its model and a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flax import nnx

from adaptive import config as config_lib
from adaptive import data, steps
from adaptive.budget import Budget
from adaptive.checkpoint import Checkpointer
from adaptive.nn.models import build_model
from adaptive.optim import make_optimizer


class RunError(ValueError):
    """The workdir is not a usable run; the message is one line."""


@dataclass
class Run:
    workdir: Path
    cfg: config_lib.Config
    spec: data.DatasetSpec
    graphdef: nnx.GraphDef
    params: dict
    step: int
    budget: Budget | None = None


def load_config(workdir: str | Path) -> config_lib.Config:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise RunError(f"{workdir} is not a training run (no config.json)")
    return config_lib.from_dict(json.loads(path.read_text()))


def load_run(workdir: str | Path, step: int | None = None) -> Run:
    """The run's model with the parameters of checkpoint `step` (default: the newest usable)."""
    run, state = restore_state(workdir, step)
    run.params = state["params"]
    return run


def restore_state(workdir: str | Path, step: int | None = None) -> tuple[Run, dict]:
    """The run and its whole train state (params, optimizer, counters) at checkpoint `step`."""
    workdir = Path(workdir).resolve()
    cfg = load_config(workdir)
    spec = data.prepare(cfg.data)
    graphdef, params = nnx.split(build_model(cfg, spec), nnx.Param)
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    budget = Budget.from_config(cfg, spec.input_shape, spec.num_classes)
    like = steps.init_state(
        graphdef, nnx.to_pure_dict(params), tx, cfg.halting, spec.input_shape, budget, cfg.train.batch_size
    )
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        if step is None:
            restored = ckpt.restore_latest(like)
            if restored is None:
                raise RunError(f"{workdir} has no checkpoint yet")
            step, state, _ = restored
        else:
            if step not in ckpt.steps():
                raise RunError(f"{workdir} has no checkpoint at step {step}; it has {ckpt.steps()}")
            state, _ = ckpt.restore(step, like)
    finally:
        ckpt.close()
    return Run(workdir, cfg, spec, graphdef, {}, step, budget), state
