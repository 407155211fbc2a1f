"""The compute-aware report of `adaptive eval`: a trained adaptive run under every budget.

What it answers, all on one split (default: the run's evaluation split):
- accuracy at every step budget (and expert budget), in the budget's unit, and the Pareto front
  of accuracy vs mean compute, beside static baselines given with `--baseline DIR`;
- budgeted batch classification (MSDNet): exit thresholds calibrated on the validation split for
  a target mean compute (always validation: thresholds are a choice), scored on this split (so
  in-sample when this split is validation); anytime accuracy (stopped after each step);
- accuracy and compute per difficulty, and on a shifted version of this split (parity: the
  same split's vectors at the difficulties beyond training, or the hardest quarter; other data:
  its inputs with added noise);
- the compute distribution (mean, p50, p99, max) and cost per correct prediction;
- with an artifact's operating points (`--points ART`: precision and pruning), each scored on
  this split and drawn on the same accuracy-vs-compute plot.
Writes DIR/eval/<split>-report-step<N>.json and three PNGs next to it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax
import numpy as np

from adaptive import data
from adaptive.compute.flops import flops_model
from adaptive.config import step_cap
from adaptive.evaluation import curves, report_plots
from adaptive.inference import outcomes
from adaptive.inference.export import at_expert_budget, cost_model_of
from adaptive.inference.restore import Run, load_run
from adaptive.inference.scoring import score_split
from adaptive.training import steps
from adaptive.workdir.config_file import RunError
from adaptive.workdir.runinfo import write_atomic

TARGET_FRACTIONS = (0.25, 0.5, 0.75)  # budgeted-batch targets, as fractions of the cap's steps
CALIBRATION_SPLIT = "validation"  # where exit thresholds are fitted, whatever split is scored


def compute_report(
    run: Run, split: str, baselines: list[str] = (), points: str | Path | None = None
) -> tuple[dict, list[Path]]:
    """`points`: an artifact of this run whose operating points (precision, pruning) the report
    scores on `split` and draws beside the step and expert budgets (adaptive.evaluation.points_report)."""
    cfg = run.cfg
    if cfg.halting.policy == "none":
        raise RunError("a static model has a single operating point: use --budget, or pass it as --baseline")
    if cfg.halting.policy == "pondernet" and cfg.halting.pondernet_inference == "sample":
        raise RunError(
            "sampled PonderNet halting has no per-budget trajectory to report on; use --budget, or train with "
            "halting.pondernet_inference=threshold"
        )
    k_max = cfg.moe.k if cfg.moe.enabled else None
    flops = flops_model(cfg, run.spec.input_shape, run.spec.num_classes, batch=cfg.train.eval_batch_size)
    budget = run.budget if run.budget is not None and run.budget.target is not None else None
    unit = budget.held_unit if budget else "flops"

    @functools.cache
    def flops_at(expert_budget: int, batch: int):
        """FLOPs as the served function runs at `expert_budget`: capacity buffers shrink with k."""
        fewer = at_expert_budget(cfg, expert_budget)
        return flops_model(fewer, run.spec.input_shape, run.spec.num_classes, batch=batch)

    def compute(steps, experts=None, expert_budget=None) -> dict:
        fewer = expert_budget is not None and expert_budget < k_max
        value = (flops_at(expert_budget, cfg.train.eval_batch_size) if fewer else flops).at_steps(steps, experts)
        in_unit = budget.compute(steps, experts, expert_budget=expert_budget if fewer else None) if budget else value
        if fewer and budget is not None and budget.unit in ("flops", "macs"):  # at the budget's serving batch
            in_unit = flops_at(expert_budget, budget.serving_batch).at_steps(steps, experts)
            in_unit = in_unit / 2.0 if budget.unit == "macs" else in_unit
        return {"flops": float(np.mean(value)), "compute": float(np.mean(in_unit))}

    test = outcomes.collect(run.graphdef, run.params, cfg, split, k_max=k_max)
    grid = curves.budget_grid(test, compute)
    correct, steps_B = test.correct_KxTxB[-1, -1], test.steps_KxTxB[-1, -1]  # the model's own choice
    accuracy = float(correct.mean())
    flops_B = flops.at_steps(steps_B.astype(float), test.experts_KxTxB[-1, -1] if flops.counted_experts else None)
    cap = step_cap(cfg)
    report = {
        "step": run.step,
        "split": split,
        "unit": unit,
        "target": budget.target if budget else None,
        "target_steps": _steps_at(budget, cap) if budget else None,
        "accuracy": accuracy,
        "compute_distribution": {
            "steps": curves.distribution(steps_B),
            "flops": curves.distribution(np.asarray(flops_B, float)),
        },
        "cost_per_correct": _cost_per_correct(run, accuracy, float(steps_B.mean()), float(np.mean(flops_B))),
        "budget_grid": grid,
        "pareto_front": [r for r in grid if r["pareto"]],
        "anytime_accuracy": curves.anytime(test),
        "threshold_curve": curves.threshold_curve(test, compute),
        "budgeted_batch": _budgeted_batch(run, split, test, compute, k_max, cap, budget),
        "baselines": [_baseline(path, split) for path in baselines],
    }
    if points is not None:
        from adaptive.evaluation.points_report import score_points

        report["operating_points"] = score_points(run, split, points)
    if test.difficulty_B.max() > 0:  # tasks whose examples carry a difficulty (parity)
        report["by_difficulty"] = curves.by_difficulty(correct, steps_B, test.difficulty_B)
    report["shifted"], shifted_steps_B = _shifted(run, split, k_max)
    out_dir = run.workdir / "eval"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{split}-report-step{run.step}.json"
    write_atomic(path, json.dumps(report, indent=1) + "\n")  # a kill never leaves half a report
    prefix = out_dir / f"{split}-step{run.step}"
    pngs = report_plots.draw(report, steps_B, shifted_steps_B, prefix, title=run.workdir.name)
    _log_to_wandb(run, report, pngs)
    return report, [path, *pngs]


def expert_budget_report(run: Run, split: str) -> tuple[list[dict], Path]:
    """A static run with experts at each expert budget 1..k (its one step budget: all its steps):
    accuracy on `split`, expert applications and FLOPs per example, as its served function runs
    at that budget (the experts keep their trained width; only routing changes). Writes
    DIR/eval/<split>-experts-step<N>.json."""
    cfg, cap = run.cfg, step_cap(run.cfg)
    out = outcomes.collect(run.graphdef, run.params, cfg, split, k_max=cfg.moe.k)
    rows = []
    for k in range(1, cfg.moe.k + 1):
        applications = float(out.experts_KxTxB[k - 1, -1].mean())  # over tokens and steps
        flops = flops_model(at_expert_budget(cfg, k), run.spec.input_shape, run.spec.num_classes,
                            batch=cfg.train.eval_batch_size)  # fmt: skip
        spent = flops.at_steps(float(cap), applications if flops.counted_experts else None)  # top-p: as routed
        rows.append(
            {
                "expert_budget": k,
                "accuracy": float(out.correct_KxTxB[k - 1, -1].mean()),
                "expert_applications": applications,
                "flops": float(np.mean(spent)),
            }
        )
    path = run.workdir / "eval" / f"{split}-experts-step{run.step}.json"
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, json.dumps({"step": run.step, "split": split, "rows": rows}, indent=1) + "\n")
    return rows, path


def _steps_at(budget, cap: int) -> float | None:
    """The mean steps whose compute is the budget's target (compute is linear in steps)."""
    low, high = float(budget.compute(0.0)), float(budget.compute(1.0))
    steps = (budget.target - low) / (high - low) if high > low else None
    return steps if steps is not None and 1.0 <= steps <= cap else None


def _budgeted_batch(run: Run, split: str, test, compute, k_max, cap: int, budget) -> list[dict]:
    if test.step_confidence_NxB is None:  # ACT has no prediction per step to exit on
        return []
    validation = outcomes.collect(run.graphdef, run.params, run.cfg, CALIBRATION_SPLIT, k_max=k_max)
    targets = {max(1.0, f * cap) for f in TARGET_FRACTIONS} | {_steps_at(budget, cap) if budget else None}
    rows = curves.budgeted_batch(validation, test, sorted(t for t in targets if t is not None), compute)
    for r in rows:
        r["calibration_split"], r["split"] = CALIBRATION_SPLIT, split
    return rows


def _cost_per_correct(run: Run, accuracy: float, steps_mean: float, flops_mean: float) -> dict:
    """FLOPs per correct answer always; money and joules when a cost model of this network exists
    (the budget's, or DIR/cost_model.json: `cost_model_of`), at the config's serving batch. With no
    correct answer there is no cost per one: null (JSON has no infinity), and `correct` says why."""
    out = {"flops": flops_mean / accuracy if accuracy else None, "correct": accuracy > 0}
    if not accuracy:
        return out
    model, batch = cost_model_of(run), run.cfg.budget.serving_batch  # the budget's, or the folder's
    if model is not None:
        per_request = model.cost_per_1k(steps_mean, batch) / 1000
        out.update(
            {
                "serving_batch": batch,
                "money": per_request / accuracy,
                "energy_j": model.energy_j(steps_mean, batch) / accuracy,
                "price_per_hour": model.price_per_hour,
            }
        )
    return out


def _baseline(workdir: str, split: str) -> dict:
    """A static run's single operating point on the same split, at its depth (`adaptive eval`
    refuses a baseline that is not a static classifier)."""
    run = load_run(workdir)
    eval_step = jax.jit(steps.make_eval_step(run.graphdef, run.spec.max_difficulty))
    metrics = score_split(eval_step, run.params, run.cfg, split)
    flops = flops_model(run.cfg, run.spec.input_shape, run.spec.num_classes, batch=run.cfg.train.eval_batch_size)
    experts = metrics["eval/experts_mean"] or None
    return {
        "run": str(workdir),
        "name": run.workdir.name,
        "accuracy": metrics["eval/accuracy"],
        "steps": metrics["eval/steps_mean"],
        "flops": float(flops.at_steps(metrics["eval/steps_mean"], experts)),
    }


def _shifted(run: Run, split: str, k_max) -> tuple[dict, np.ndarray]:
    """The model at its own halting on harder inputs of `split` than it was trained on (and its
    steps). Parity draws test from eval_difficulty and train and validation from
    train_difficulty: the shift moves the range that `split` is drawn from, so the shifted
    vectors are still `split`'s own (splits are disjoint by content)."""
    cfg = run.cfg
    transform = None
    if cfg.data.name == "parity":
        n = cfg.data.parity_n
        trained = cfg.data.train_difficulty or (1, n)
        shift = (trained[1] + 1, n) if trained[1] < n else (max(1, math.ceil(0.75 * n)), n)
        moved = {"eval_difficulty": shift} if split == "test" else {"train_difficulty": shift}
        if split != "train":  # only `split` is read: a small train split keeps the extra cache small
            moved["num_train"] = cfg.data.num_eval
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **moved))
        beyond = shift[0] > trained[1]  # past what it was trained on, or (trained on every n) its hardest share
        how = "past" if beyond else "the hardest of"
        what = f"parity difficulty {shift[0]}..{shift[1]}, {how} the {trained[0]}..{trained[1]} it was trained on"
    else:
        source = data.load_split(cfg.data, split)
        scale = 0.5 * float(np.std(source.read_batch(np.arange(min(256, len(source))))["x"]))
        rng = np.random.default_rng(0)

        def transform(x):  # seeded once per report: every evaluation draws the same noise
            return x + scale * rng.standard_normal(x.shape).astype(np.float32)

        what = f"inputs + Gaussian noise of std {scale:.3g} (half the inputs' std)"
    shifted = outcomes.collect(run.graphdef, run.params, cfg, split, k_max=k_max, transform=transform)
    correct, steps_B = shifted.correct_KxTxB[-1, -1], shifted.steps_KxTxB[-1, -1]
    out = {"what": what, "accuracy": float(correct.mean()), "steps": curves.distribution(steps_B)}
    if shifted.difficulty_B.max() > 0:
        out["by_difficulty"] = curves.by_difficulty(correct, steps_B, shifted.difficulty_B)
    return out, steps_B


def _log_to_wandb(run: Run, report: dict, pngs: list[Path]) -> None:
    if run.cfg.logging.wandb == "disabled":
        return
    from adaptive.training.metrics import WandbWriter

    writer = WandbWriter(
        run.workdir, mode=run.cfg.logging.wandb, project=run.cfg.logging.wandb_project, group=run.cfg.name, config={}
    )
    summary = {
        "eval_report/accuracy": report["accuracy"],
        "eval_report/steps_mean": report["compute_distribution"]["steps"]["mean"],
        "eval_report/shifted_accuracy": report["shifted"]["accuracy"],
    }
    writer.write(run.step, "eval", summary)
    writer.log_images(run.step, {f"eval_report/{p.stem.split('-')[-1]}": p for p in pngs})
    writer.close()
