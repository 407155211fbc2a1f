"""What a sweep refuses before anything trains, beyond its points' configs: a budget in steps,
FLOPs or MACs no model of a point's config can keep (a target past what it spends at its cap or
under one step, a request cap under one step). `adaptive train` refuses these at its start; a
sweep that waited for it would fail at that point after the points before it trained.

Budgets priced by a cost model or by compiled memory are left to each point's own start: their
checks load the cost model for this machine or compile the model, and the sweep's own process
never starts JAX on the accelerators its points share out."""

from __future__ import annotations

import json

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.config import ConfigError

ANALYTIC_UNITS = ("steps", "flops", "macs")  # priced from the config alone


def unreachable_budgets(points) -> dict[int, str]:
    """{point index: the one-line refusal `adaptive train` would give} for the points whose
    budget cannot be trained toward; each dataset described once (`data.prepare`; a point whose
    data cannot be read is left to fail as it trains, like any failing point)."""
    specs, refused = {}, {}
    for point in points:
        cfg = point.config
        if (cfg.budget.target is None and not cfg.budget.requests) or cfg.budget.unit not in ANALYTIC_UNITS:
            continue  # nothing to check, or checked as the point starts (see the module's docstring)
        key = json.dumps(config_lib.to_dict(cfg)["data"], sort_keys=True)
        if key not in specs:
            try:
                specs[key] = data.prepare(cfg.data)
            except Exception:  # data it cannot read: the point's own training fails and says so,
                specs[key] = None  # and the sweep goes on with the others
        spec = specs[key]
        if spec is None:
            continue
        try:
            budget = Budget.from_config(cfg, spec.input_shape, spec.num_classes)
            if budget is not None:
                budget.check_trainable(cfg)
        except ConfigError as e:
            refused[point.index] = str(e)
        except Exception:  # not a refusal of the budget: the point's own start says what it is
            continue
    return refused
