"""`adaptive calibrate --workdir DIR`: time a run's compiled inference and fit its cost model.

Every example is forced to run exactly s steps (the halting unit switched off, the step budget
set to s) for s on a grid up to the cap, at each batch size, and, for MoE models, with each
expert budget k. Medians after warm-up give latency_ms = intercept + per_step * steps per
(batch, k), saved as DIR/cost_model.json with the run's fingerprint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.bench.timing import time_side_by_side
from adaptive.config import step_cap
from adaptive.costmodel import CostModel, fingerprint, fit_line, machine
from adaptive.nn.models import build_model
from adaptive.predict import BudgetedPredictor
from adaptive.runs import load_run
from adaptive.tables import print_table


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


def calibrate(
    workdir: str | Path, *, batches: list[int], repeats: int, price_per_hour: float, power_watts: float
) -> tuple[CostModel, Path]:
    run = load_run(workdir)
    cap = step_cap(run.cfg)
    grid = sorted({1, max(1, cap // 4), max(1, cap // 2), cap}) if run.cfg.halting.policy != "none" else [cap]
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    graphdef, params = _forced_depth(run)
    predictor = BudgetedPredictor(graphdef, params, run.spec.input_shape, cap, k_max=k_max)
    rng = np.random.default_rng(0)
    fits, rows = {}, []
    for experts in range(1, k_max + 1) if k_max else [None]:
        for batch in batches:
            x = rng.choice([-1.0, 0.0, 1.0], (batch, *run.spec.input_shape)).astype(np.float32)
            calls = {s: (lambda s=s, x=x, k=experts: predictor.predict(x, s, k)) for s in grid}
            for s in grid:  # the forced depth really is s for every example
                assert (np.asarray(calls[s]().steps_B) == s).all()
            ms = time_side_by_side(calls, repeats=repeats)
            fit = fit_line([(s, ms[s]) for s in grid])
            fits[CostModel.key(batch, experts)] = fit
            rows.append(
                {
                    "batch": batch,
                    "experts": experts or "all",
                    "intercept_ms": fit.intercept_ms,
                    "per_step_ms": fit.per_step_ms,
                    **{f"{s}_steps_ms": ms[s] for s in grid},
                }
            )
    model = CostModel(fingerprint(run.cfg, run.spec.input_shape), machine(), price_per_hour, power_watts, fits)
    path = run.workdir / "cost_model.json"
    model.save(path)
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    return model, path
