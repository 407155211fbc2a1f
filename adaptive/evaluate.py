"""`adaptive eval --workdir DIR [--step N] [--split NAME] [--budget B]`: score a trained run.

Writes DIR/eval/<split>[-budget<B>]-step<N>.json with accuracy, loss and compute steps
(overall and per difficulty), computed by the inference path under the step budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from adaptive import steps
from adaptive.config import step_cap
from adaptive.runs import RunError, load_run
from adaptive.scoring import evaluate


def evaluate_run(
    workdir: str | Path, *, split: str | None = None, step: int | None = None, budget: int | None = None
) -> tuple[dict, Path]:
    run = load_run(workdir, step)
    split = split or run.cfg.data.eval_split
    cap = step_cap(run.cfg)
    if budget is not None and not 1 <= budget <= cap:
        raise RunError(f"--budget must be in [1, {cap}] for this model; got {budget}")
    eval_step = jax.jit(steps.make_eval_step(run.graphdef, run.spec.max_difficulty))
    metrics = {
        "step": run.step,
        "split": split,
        "budget": budget or cap,
        **evaluate(eval_step, run.params, run.cfg, split, budget),
    }
    out = run.workdir / "eval" / f"{split}{f'-budget{budget}' if budget else ''}-step{run.step}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, out
