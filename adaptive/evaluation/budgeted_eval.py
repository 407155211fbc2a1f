"""`adaptive eval --workdir DIR [--step N] [--split NAME] [--budget B]`: score a trained run.

Writes DIR/eval/<split>[-budget<B>]-step<N>.json with accuracy, loss and compute steps
(overall and per difficulty), computed by the inference path under the step budget. Without
--split it scores the run's data.eval_split (validation, where choices are made): the test
split is read only when asked for, once, at the end. The JSON's `split` names it. Without
--budget, a run trained for a distribution of request budgets is scored under that distribution
(each example's step cap drawn from it), as deployed; otherwise at the cap.

`--halt threshold|sample` scores a PonderNet run with that halting rule whatever it was trained
with (the parameters do not depend on it): Banino et al. evaluate by sampling. The JSON records
`halting` and its name gains `-<halt>`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from adaptive import data
from adaptive.config import step_cap
from adaptive.inference.export import cost_model_of
from adaptive.inference.infer import with_halting
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.inference.restore import load_run
from adaptive.inference.scoring import draws_key, request_steps, score_split
from adaptive.training import steps
from adaptive.workdir.config_file import RunError
from adaptive.workdir.runinfo import write_atomic


def evaluate_run(
    workdir: str | Path,
    *,
    split: str | None = None,
    step: int | None = None,
    budget: int | None = None,
    latency_batch: int | None = None,
    halt: str | None = None,
) -> tuple[dict, Path]:
    run = load_run(workdir, step)
    if halt is not None:
        if run.cfg.halting.policy != "pondernet":
            raise RunError(f"--halt applies to PonderNet runs; this run's halting policy is {run.cfg.halting.policy!r}")
        halting = dataclasses.replace(run.cfg.halting, pondernet_inference=halt)
        run = dataclasses.replace(
            run,
            cfg=dataclasses.replace(run.cfg, halting=halting),
            graphdef=with_halting(run.graphdef, run.params, pondernet_inference=halt),
        )
    split = split or run.cfg.data.eval_split
    cap = step_cap(run.cfg)
    if budget is not None and budget < cap and run.cfg.halting.policy == "none" and budget >= 1:
        raise RunError(f"--budget {budget}: a static model runs all its {cap} steps (it has no readout before them)")
    if budget is not None and not 1 <= budget <= cap:
        if run.cfg.halting.policy == "none":  # its one budget: all its steps
            raise RunError(f"--budget must be {cap} for this static model (all its steps); got {budget}")
        raise RunError(f"--budget must be in [1, {cap}] for this model; got {budget}")
    eval_step = jax.jit(steps.make_eval_step(run.graphdef, run.spec.max_difficulty))
    requests = run.budget if budget is None and run.budget is not None and run.budget.request_steps else None
    metrics = {
        "step": run.step,
        "split": split,
        "policy": run.cfg.halting.policy,
        "budget": budget or cap,
        **({"halting": halt} if halt else {}),
        **score_split(eval_step, run.params, run.cfg, split, budget, requests),
    }
    if requests is not None:
        metrics["budget"] = "requests"
        metrics["request_step_caps"] = dict(zip(map(str, requests.request_steps), requests.request_probs, strict=True))
    if latency_batch:
        metrics.update(measure_latency(run, split, budget or cap, latency_batch, requests=requests))
    name = f"{split}{f'-budget{budget}' if budget else ''}{f'-{halt}' if halt else ''}-step{run.step}"
    out = run.workdir / "eval" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    write_atomic(out, json.dumps(metrics, indent=2) + "\n")  # a kill never leaves half a report
    return metrics, out


def measure_latency(run, split: str, budget: int, batch: int, calls: int = 200, requests=None) -> dict:
    """Wall-clock latency of the compiled budgeted predictor on `calls` real batches of `split`
    (cycling through the split when it has fewer; the model's own halting decides the depth,
    under `budget` or caps drawn from `requests`), after warm-up; medians and tail in ms."""

    def caps_for(i: int):  # the same per-request caps `score_split` draws, batch by batch
        return budget if requests is None else np.asarray(request_steps(requests, i, batch))

    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    predictor = BudgetedPredictor(run.graphdef, run.params, run.spec.input_shape, step_cap(run.cfg), k_max=k_max)
    batches = [b for b in data.eval_batches(run.cfg.data, split, batch) if b["mask"].all()][:calls]
    if not batches:
        raise RunError(f"split {split!r} has fewer than {batch} examples: no full batch to time")
    for b in batches[:5]:  # compile and warm up
        jax.block_until_ready(predictor.predict(b["x"], caps_for(0)))
    times, steps, slowest = [], [], []
    for i in range(calls):
        b, caps = batches[i % len(batches)], caps_for(i % len(batches))
        start = time.perf_counter()
        out = jax.block_until_ready(predictor.predict(b["x"], caps))
        times.append((time.perf_counter() - start) * 1e3)
        steps.append(float(np.mean(out.steps_B)))
        slowest.append(int(np.max(out.steps_B)))
    metrics = {
        "latency/batch": batch,
        "latency/batches": len(times),  # timed calls
        "latency/distinct_batches": len(batches),
        "latency/p50_ms": float(np.percentile(times, 50)),
        "latency/p95_ms": float(np.percentile(times, 95)),
        "latency/p99_ms": float(np.percentile(times, 99)),
        "latency/steps_mean": float(np.mean(steps)),
        "latency/slowest_steps_mean": float(np.mean(slowest)),  # a batch runs until its slowest example halts
    }
    # the budget's, else DIR/cost_model.json (as export prices), whichever batches it was calibrated at
    cost_model = cost_model_of(run, at_serving_batch=False)
    if cost_model is None:
        metrics["latency/unpredicted"] = (
            f"no cost model of this run to check: `adaptive calibrate --workdir DIR --batches {batch}` fits one"
        )
    elif cost_model.calibrated_key(batch, None) in cost_model.fits:
        # What the calibration predicts for the same batches: checks the cost model on real traffic.
        median = [float(cost_model.latency_ms(s, batch)) for s in slowest]
        tail = [float(cost_model.tail_latency_ms(s, batch)) for s in slowest]
        metrics["latency/predicted_p50_ms"] = float(np.percentile(median, 50))
        metrics["latency/predicted_p99_ms"] = float(np.percentile(tail, 99))
    else:  # said, rather than the prediction silently missing
        metrics["latency/unpredicted"] = (
            f"the cost model has no calibration at batch {batch} (it has {cost_model.calibrated()}): "
            f"`adaptive calibrate --batches {batch}` adds one"
        )
    if requests is not None and requests.unit == "latency_ms":
        stated = run.cfg.budget.requests
        slas = call_slas(requests, stated, calls, len(batches), batch)
        metrics["latency/sla_ms"] = float(min(stated))
        metrics["latency/over_sla_fraction"] = float(np.mean(np.asarray(times) > slas))
    return metrics


def call_slas(requests, stated, calls: int, distinct: int, batch: int) -> np.ndarray:
    """Each timed call's SLA: the tightest of the requests its batch drew (a batch answers its
    tightest request), drawn as `score_split` draws them, batch i % distinct for call i."""
    values = np.asarray(stated, np.float64)
    return np.array(
        [values[np.asarray(requests.sample_requests(draws_key(i % distinct), batch))].min() for i in range(calls)]
    )
