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
from adaptive.runinfo import json_problem


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
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise damaged_config(path, json_problem(e)) from e
    return config_lib.from_dict(saved)


def damaged_config(path: Path, problem: str) -> RunError:
    """The one-line refusal for a config.json that does not parse, with the way to recover: the
    run's checkpoints are intact, only the record of the config that made them is not."""
    return RunError(
        f"{path} is corrupted ({problem}); restore it, or delete it and rerun adaptive train with the "
        f"run's --config and overrides (run.json records the command) to rewrite it and resume"
    )


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
    if not (workdir / "checkpoints").is_dir():
        raise RunError(f"{workdir} has no checkpoint yet")
    # Readers leave the run as they found it: an unusable newest step is skipped with a warning,
    # not set aside (training does that when it resumes).
    ckpt = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints, create=False)
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
