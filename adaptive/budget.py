"""Budgets: a target mean compute per example, checked against what the model can spend.

`Budget.from_config` turns a BudgetConfig into the compute function of its unit, as a function
of steps: steps; FLOPs or MACs (adaptive/flops.py); latency, cost or energy through a calibrated
cost model (adaptive/costmodel.py). It refuses, in one line, a target the model cannot meet:
not positive, below one step's compute, or above the cap's.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from adaptive.config import ConfigError, step_cap
from adaptive.costmodel import CostModel, fingerprint
from adaptive.flops import FlopsModel, flops_model


@dataclass(frozen=True)
class Budget:
    unit: str
    target: float
    penalty: str
    weight: float
    dual_lr: float
    flops: FlopsModel
    cost_model: CostModel | None = None
    serving_batch: int = 1

    @classmethod
    def from_config(cls, cfg, input_shape: tuple[int, ...], num_classes: int) -> Budget | None:
        """The budget of a whole Config for data of `input_shape`, or None when it sets none."""
        b, cap, batch = cfg.budget, step_cap(cfg), cfg.train.batch_size
        if b.target is None:
            return None
        flops = flops_model(cfg, input_shape, num_classes, batch=batch, train=True)
        cost_model = None
        if b.unit in ("latency_ms", "cost_per_1k", "energy_j"):
            if not b.cost_model:
                raise ConfigError(
                    f"budget.unit={b.unit} needs budget.cost_model=PATH, a cost_model.json made by "
                    "`adaptive calibrate` for this network"
                )
            cost_model = CostModel.load(b.cost_model, expect_fingerprint=fingerprint(cfg, input_shape))
            if cost_model.fit(b.serving_batch).per_step_ms <= 0:  # also refuses an uncalibrated batch size
                raise ConfigError(
                    f"{b.cost_model} shows no latency per step at batch {b.serving_batch} (timer noise): a "
                    f"{b.unit} budget cannot steer this model; calibrate a larger batch or more repeats"
                )
        budget = cls(b.unit, float(b.target), b.penalty, b.weight, b.dual_lr, flops, cost_model, b.serving_batch)
        low, high = budget.compute(1.0), budget.compute(float(cap))
        if not b.target > 0:
            raise ConfigError(f"config key 'budget.target' is {b.target!r}; a budget must be positive")
        if not low <= b.target <= high:
            steps = "" if b.unit == "steps" else f" (1 to {cap} steps)"
            raise ConfigError(
                f"config key 'budget.target' is {b.target:g} {b.unit}; this model spends {low:g} to {high:g} "
                f"{b.unit} per example{steps}"
            )
        return budget

    def compute(self, steps):
        """Compute per example in this budget's unit, for `steps` steps (differentiable)."""
        if self.unit == "steps":
            return steps
        if self.cost_model is not None:  # latency_ms, cost_per_1k or energy_j
            return getattr(self.cost_model, self.unit)(steps, self.serving_batch)
        flops = self.flops.at_steps(steps)
        return flops / 2.0 if self.unit == "macs" else flops

    @property
    def scale(self) -> float:
        """What gaps are measured against: the part of the target that depends on steps.

        Dividing by the target itself would make a step worth 4% of a latency target whose
        fixed overhead dominates (measured: parity at batch 32, 0.109 ms + 0.007 ms a step), and
        the penalty too weak to hold it; the step-dependent part makes a step weigh the same
        whatever the unit.
        """
        return max(self.target - float(self.compute(0.0)), 1e-12)

    def penalty_term(self, expected_B, multiplier):
        """The loss term for expected compute per example `expected_B`."""
        gap = (jnp.mean(expected_B) - self.target) / self.scale
        if self.penalty == "hinge":
            return self.weight * jnp.mean(jnp.maximum(expected_B - self.target, 0.0)) / self.scale
        # Augmented Lagrangian: the quadratic term pulls toward the target on its own and damps
        # the oscillation that plain dual ascent shows (measured: +-50% swings around the target).
        return multiplier * gap + 0.5 * self.weight * gap**2

    def dual_step(self, multiplier, expected_B):
        """Dual ascent on the multiplier of E[c] = target: up when over, down when under."""
        gap = (jnp.mean(expected_B) - self.target) / self.scale
        return multiplier + self.dual_lr * gap if self.penalty == "lagrangian" else multiplier
