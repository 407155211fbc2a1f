"""What a sweep refuses before anything trains, beyond its points' configs: a budget no model of
a point's config can keep (a target past what it spends at its cap or under one step, a request
cap under one step, a cost model of another network). `adaptive train` refuses these at its
start; a sweep that waited for it would fail at that point after the points before it trained."""

from __future__ import annotations

import json

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.config import ConfigError
from adaptive.workdir.config_file import with_run_cost_model


def unreachable_budgets(points) -> dict[int, str]:
    """{point index: the one-line refusal `adaptive train` would give} for the points whose
    budget cannot be trained toward; each dataset described once (`data.prepare`; a point whose
    data cannot be read is left to fail as it trains, like any failing point)."""
    specs, refused = {}, {}
    for point in points:
        cfg = point.config
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
            budget = Budget.from_config(with_run_cost_model(cfg, point.workdir), spec.input_shape, spec.num_classes)
            if budget is not None:
                budget.check_trainable(cfg)
        except ConfigError as e:
            refused[point.index] = str(e)
    return refused
