"""A trained run read back for inference: its config and its parameters, nothing else.

Only the `params` subtree of a checkpoint is read (an orbax partial restore): no optimizer is
built and no loss is traced, so inference never depends on training code. The parameters are
checked against their own SHA-256 (checkpoints saved before it are read with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flax import nnx

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.nn.models import build_model
from adaptive.workdir.checkpoint import Checkpointer
from adaptive.workdir.config_file import RunError, checkpoint_folder, load_config


@dataclass
class Run:
    workdir: Path
    cfg: config_lib.Config
    spec: data.DatasetSpec
    graphdef: nnx.GraphDef
    params: dict
    step: int
    budget: Budget | None = None


def load_run(workdir: str | Path, step: int | None = None, *, language_model: bool = False) -> Run:
    """The run's model with the parameters of checkpoint `step` (default: the newest usable).

    The tools that read runs today (eval, export, calibrate, serve) read classifiers: a language
    model's run is refused in one line unless the caller reads language models."""
    workdir = Path(workdir).resolve()
    cfg = load_config(workdir)
    if cfg.model.kind == "lm" and not language_model:
        raise RunError(
            f"{workdir} holds a language model (model.kind='lm'); this command reads classifiers "
            "(its training run's evals report bits per byte: DIR/metrics.jsonl)"
        )
    spec = data.prepare(cfg.data)
    graphdef, params = nnx.split(build_model(cfg, spec), nnx.Param)
    budget = Budget.from_config(cfg, spec.input_shape, spec.num_classes)
    # Readers leave the run as they found it: an unusable newest step is skipped with a warning,
    # not set aside (training does that when it resumes).
    ckpt = Checkpointer(checkpoint_folder(workdir), keep=cfg.train.keep_checkpoints, create=False)
    like = nnx.to_pure_dict(params)
    try:
        if step is None:
            restored = ckpt.restore_latest_params(like)
            if restored is None:
                raise RunError(f"{workdir} has no checkpoint yet")
            step, params = restored
        else:
            if step not in ckpt.steps():
                raise RunError(f"{workdir} has no checkpoint at step {step}; it has {ckpt.steps()}")
            params = ckpt.restore_params(step, like)
    finally:
        ckpt.close()
    return Run(workdir, cfg, spec, graphdef, params, step, budget)
