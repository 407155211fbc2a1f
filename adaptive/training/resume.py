"""A run's whole train state (params, optimizer, counters) read back from its workdir."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.inference.restore import Run
from adaptive.nn.models import build_model
from adaptive.training import lm_steps, steps
from adaptive.training.optim import make_optimizer
from adaptive.workdir.checkpoint import Checkpointer
from adaptive.workdir.config_file import RunError, checkpoint_folder, load_config


def restore_state(workdir: str | Path, step: int | None = None) -> tuple[Run, dict]:
    """The run and its whole train state at checkpoint `step` (default: the newest usable)."""
    workdir = Path(workdir).resolve()
    cfg = load_config(workdir)
    spec = data.prepare(cfg.data)
    graphdef, params = nnx.split(build_model(cfg, spec), nnx.Param)
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    budget = Budget.from_config(cfg, spec.input_shape, spec.num_classes)
    loss_fn = lm_steps.loss_fn_of(cfg, spec, graphdef, budget)
    like = steps.init_state(
        graphdef, nnx.to_pure_dict(params), tx, cfg.halting, spec.input_shape, budget, cfg.train.batch_size, loss_fn
    )
    ckpt = Checkpointer(checkpoint_folder(workdir), keep=cfg.train.keep_checkpoints, create=False)
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
    return Run(workdir, cfg, spec, graphdef, state["params"], step, budget), state
