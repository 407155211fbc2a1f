"""`adaptive calibrate --workdir DIR`: time a run's compiled inference and fit its cost model.

Every example is forced to run exactly s steps (the halting unit switched off, the step budget
set to s) for s on a grid up to the cap, at each batch size, and, for MoE models, with each
expert budget k. The inputs are real traffic: full batches of the run's validation split (never
test: the cost model feeds choices, which are made on validation), a different one each call
(one array sent again and again runs faster than a stream of distinct batches, from cache
effects a deployment does not get). Medians and p99s after warm-up give latency_ms =
intercept + per_step * steps per (batch, k), saved as DIR/cost_model.json with the run's
fingerprint.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import data
from adaptive.compute.costmodel import CostModel, fingerprint, fit_line, machine
from adaptive.compute.timing import samples_side_by_side
from adaptive.config import step_cap
from adaptive.evaluation.tables import print_table
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.inference.restore import load_run
from adaptive.nn.models import build_model

TRAFFIC_SPLIT = "validation"


def _forced_depth(run):
    """(graphdef, params) of the run's model with halting disabled: the step budget decides."""
    cfg = run.cfg
    cfg = dataclasses.replace(cfg, halting=dataclasses.replace(cfg.halting, exit_threshold=2.0))  # never confident
    graphdef, _ = nnx.split(build_model(cfg, run.spec), nnx.Param)
    params = run.params
    if "halt_unit" in params:
        unit = params["halt_unit"]
        params = {
            **params,
            "halt_unit": {"kernel": jnp.zeros_like(unit["kernel"]), "bias": jnp.full_like(unit["bias"], -30.0)},
        }
    return graphdef, params


def _traffic(run, batch: int, split: str = TRAFFIC_SPLIT):
    """An endless stream of distinct real input batches of size `batch` from `split` (random
    inputs of the right shape when it has no full batch that large)."""
    pool = [b["x"] for b in data.eval_batches(run.cfg.data, split, batch) if b["mask"].all()]
    if not pool:
        rng = np.random.default_rng(0)
        pool = [rng.standard_normal((batch, *run.spec.input_shape)).astype(np.float32) for _ in range(8)]
    return itertools.cycle(pool)


def calibrate(
    workdir: str | Path, *, batches: list[int], repeats: int, price_per_hour: float, power_watts: float
) -> tuple[CostModel, Path]:
    run = load_run(workdir)
    cap = step_cap(run.cfg)
    grid = sorted({1, max(1, cap // 4), max(1, cap // 2), cap}) if run.cfg.halting.policy != "none" else [cap]
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    graphdef, params = _forced_depth(run)
    predictor = BudgetedPredictor(graphdef, params, run.spec.input_shape, cap, k_max=k_max)
    fits, tails, rows = {}, {}, []
    for experts in range(1, k_max + 1) if k_max else [None]:
        for batch in batches:
            stream = _traffic(run, batch)
            calls = {s: (lambda s=s, k=experts, xs=stream: predictor.predict(next(xs), s, k)) for s in grid}
            for s in grid:  # the forced depth really is s for every example
                assert (np.asarray(calls[s]().steps_B) == s).all()
            samples = samples_side_by_side(calls, repeats=repeats)
            median = {s: float(np.median(samples[s])) for s in grid}
            p99 = {s: float(np.percentile(samples[s], 99)) for s in grid}
            key = CostModel.key(batch, experts)
            fits[key], tails[key] = fit_line(list(median.items())), fit_line(list(p99.items()))
            rows.append(
                {
                    "batch": batch,
                    "experts": experts or "all",
                    "intercept_ms": fits[key].intercept_ms,
                    "per_step_ms": fits[key].per_step_ms,
                    "p99_intercept_ms": tails[key].intercept_ms,
                    "p99_per_step_ms": tails[key].per_step_ms,
                    **{f"{s}_steps_ms": median[s] for s in grid},
                    "fit_error": _worst_error(fits[key], median),
                    "p99_fit_error": _worst_error(tails[key], p99),
                }
            )
    model = CostModel(fingerprint(run.cfg, run.spec.input_shape), machine(), price_per_hour, power_watts, fits, tails)
    path = run.workdir / "cost_model.json"
    model.save(path)
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    print(
        "fit_error: the worst |line - median| / median over the step budgets timed; cost_per_1k and energy_j "
        f"budgets price these latencies at {price_per_hour:g} (money) per hour and {power_watts:g} W "
        "(--price-per-hour, --power-watts)"
    )
    for note in _notes(rows, grid):
        print(f"note: {note}")
    return model, path


def _worst_error(fit, median: dict) -> float:
    return max(abs(fit.intercept_ms + fit.per_step_ms * s - ms) / ms for s, ms in median.items())


def _notes(rows: list[dict], grid: list[int]) -> list[str]:
    """What a reader of the fits should know before budgeting through them: a poor line (of the
    medians or of the p99s), and
    latency that hardly follows steps (a latency budget then buys few steps' difference)."""
    notes = []
    for r in rows:
        where = f"batch {r['batch']}, experts {r['experts']}"
        if r["fit_error"] > 0.2:
            notes.append(f"{where}: the line misses a timed point by {r['fit_error']:.0%} (noise? more --repeats)")
        if r.get("p99_fit_error", 0.0) > 0.2:  # latency caps per request are priced through this line
            notes.append(
                f"{where}: the p99 line misses a timed p99 by {r['p99_fit_error']:.0%}, so per-request latency "
                "caps are priced loosely (a noisy tail: more --repeats steadies it)"
            )
        first, last = r[f"{grid[0]}_steps_ms"], r[f"{grid[-1]}_steps_ms"]
        if len(grid) > 1 and last < 1.1 * first:
            notes.append(
                f"{where}: {grid[-1]} steps take {last:.3g} ms against {first:.3g} for {grid[0]}: latency hardly "
                "follows steps here, so a latency budget chooses between nearly equal prices"
            )
    return notes
