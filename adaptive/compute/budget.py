"""Budgets: a target mean compute per example and per-request hard caps, checked against what
the model can spend.

`Budget.from_config` turns a BudgetConfig into the compute function of its unit, as a function
of steps: steps; FLOPs or MACs (adaptive/flops.py); latency, cost or energy through a calibrated
cost model (adaptive/costmodel.py). It refuses, in one line, a target or a request budget the
model cannot meet: not positive, below one step's compute, or above the cap's.

The target is a ceiling by default: the penalty is the augmented Lagrangian of E[c] <= target
and its multiplier stays >= 0, so a model that needs less than the budget pays nothing for it.
`two_sided` makes it an equality, E[c] = target, for sweeps that want to land on a compute level.

Request budgets (one value, or a distribution over requests) become step caps: the most steps
whose compute fits, with every expert a token may use counted, so a cap holds for any routing.

A language model's budget is per token (`Budget.tokens`, its LMFlops): blocks run (`steps`),
FLOPs or MACs, priced at the operating point decoding runs (exits at the configured threshold,
MoD blocks routed by their causal predictor, top-p experts as routed) over a window, as eval
scores it; adaptive.training.lm_budget turns a training forward pass into those tokens'
expected and realized compute. Decoding one token at a time also fills the key/value cache of
the blocks above a token's exit (`lm_flops(decoding=True)`, what `adaptive generate` reports):
a window's price leaves that fill out, so it is the lower of the two for exiting models.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from adaptive.compute.costmodel import CostModel, fingerprint
from adaptive.compute.flops import FlopsModel, flops_model
from adaptive.compute.lm_flops import LMFlops, lm_flops
from adaptive.config import ConfigError, step_cap

log = logging.getLogger(__name__)
NEAR_FLOOR = 0.1  # a two-sided target this share of the way from the least compute to the most


@dataclass(frozen=True)
class Budget:
    unit: str
    target: float | None  # None: hard caps per request only
    penalty: str
    weight: float
    dual_lr: float
    flops: FlopsModel
    cost_model: CostModel | None = None
    serving_batch: int = 1
    request_steps: tuple[int, ...] = ()  # each request budget as a step cap
    request_probs: tuple[float, ...] = ()  # how often each occurs
    two_sided: bool = False  # lagrangian only: E[c] = target instead of E[c] <= target
    tokens: LMFlops | None = None  # a language model's: compute is per token, priced block by block

    @classmethod
    def from_config(cls, cfg, input_shape: tuple[int, ...], num_classes: int) -> Budget | None:
        """The budget of a whole Config for data of `input_shape`, or None when it sets none."""
        b, cap = cfg.budget, step_cap(cfg)
        if b.request_weights and not b.requests:
            raise ConfigError("config key 'budget.request_weights' is set without budget.requests to weigh")
        if b.target is None and not b.requests:
            return None
        if b.unit == "memory_mb":
            check_memory_budget(cfg)
            return None  # memory does not vary with steps: it selects operating points at export
        if b.two_sided and b.penalty != "lagrangian":
            raise ConfigError(
                f"config key 'budget.two_sided' needs budget.penalty=lagrangian; penalty is {b.penalty!r}"
            )
        if cfg.model.kind == "lm":
            return cls._per_token(cfg, input_shape[0], num_classes)
        if b.requests and cfg.halting.policy == "none":
            raise ConfigError("config key 'budget.requests' needs an adaptive model; halting.policy is 'none'")
        # Priced as the model runs when served (at the serving batch, with inference's expert
        # capacity): the target and the per-request caps are about the deployed model, and with
        # capacity dispatch training's capacity would price a step at a third of what it runs.
        flops = flops_model(cfg, input_shape, num_classes, batch=b.serving_batch)
        cost_model = None
        if b.unit in ("latency_ms", "cost_per_1k", "energy_j", "requests_per_s"):
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
        target = None if b.target is None else float(b.target)
        if b.unit == "requests_per_s" and target is not None:
            target = _per_request_ms(target, "budget.target")
        budget = cls(
            b.unit, target, b.penalty, b.weight, b.dual_lr, flops, cost_model, b.serving_batch, two_sided=b.two_sided
        )
        low, high = budget._example_range(cfg)
        spends = f"{low:g}" if low == high else f"{low:g} to {high:g}"  # every step run: one figure
        unit_range = f"this model spends {spends} {b.unit} per example"
        if b.unit == "requests_per_s":
            unit_range = f"this model sustains {1000 / high:g} to {1000 / low:g} requests/s at batch {b.serving_batch}"
        fewest = cap if cfg.halting.policy == "none" else 1
        steps = f"{cap} steps" if fewest == cap else f"1 to {cap} steps"
        unit_range += "" if b.unit == "steps" else f" ({steps})"
        if target is not None:
            if not target > 0:
                raise ConfigError(f"config key 'budget.target' is {b.target!r}; a budget must be positive")
            if not low <= target <= high:
                raise ConfigError(f"config key 'budget.target' is {b.target:g} {b.unit}; {unit_range}")
        if not b.requests:
            return budget
        # A request's cap must allow one step at its most expensive (every expert a token may use).
        lowest, highest = budget.hard_compute(1.0), max(high, budget.hard_compute(float(cap)))
        for stated in b.requests:
            value = _per_request_ms(stated, "budget.requests") if b.unit == "requests_per_s" else stated
            if not lowest <= value <= highest:
                if b.unit == "requests_per_s":
                    raise ConfigError(
                        f"config key 'budget.requests' holds {stated:g} requests_per_s; this model sustains "
                        f"{1000 / highest:g} to {1000 / lowest:g} at batch {b.serving_batch}"
                    )
                raise ConfigError(
                    f"config key 'budget.requests' holds {value:g} {b.unit}; a request needs {lowest:g} to {highest:g}"
                )
        weights = b.request_weights or (1.0,) * len(b.requests)
        if len(weights) != len(b.requests) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"config key 'budget.request_weights' is {b.request_weights}; give one weight >= 0 per request "
                f"({len(b.requests)}), not all 0, or none for equal weights"
            )
        per_request = [1000.0 / v if b.unit == "requests_per_s" else v for v in b.requests]
        caps = tuple(budget.steps_within(v, cap) for v in per_request)
        probs = tuple(float(w) / sum(weights) for w in weights)
        return dataclasses.replace(budget, request_steps=caps, request_probs=probs)

    def check_trainable(self, cfg) -> None:
        """Refuses, in one line, a training target the penalty cannot steer: its gradient moves
        ACT's and PonderNet's halting, and top-p routers' expert counts where FLOPs or MACs price
        them; on anything else the multiplier and the loss would grow without end. (Only training
        asks: a run trained before this check still loads.)"""
        if self.target is None:
            return
        if self.tokens is not None:  # a language model's: its range checked in _per_token
            self._warn_near_floor(cfg)
            return
        policy = cfg.halting.policy
        experts = self.flops.dynamic_experts and self.flops.counted_experts and self.unit in ("flops", "macs")
        if policy in ("act", "pondernet") or experts:
            self._warn_near_floor(cfg)
            return
        how = "runs every step" if policy == "none" else "exits by a confidence threshold, set after training"
        raise ConfigError(
            f"config key 'budget.target' is set; halting.policy={policy!r} {how}, and a compute penalty moves "
            "only ACT's or PonderNet's halting, or top-p experts priced in flops or macs: change one, or leave "
            "the target unset"
        )

    def _warn_near_floor(self, cfg) -> None:
        """A warning for a two-sided target near the least compute the model spends: the penalty
        then pushes nearly every example or token onto its cheapest path (the first exit, one
        step), which a small model pays for in quality far beyond what the compute saved."""
        if not self.two_sided:
            return
        if self.tokens is not None:
            least, most = _token_range(cfg, self.tokens, self.unit)
        else:
            least, most = self._example_range(cfg)
        if not (most > least and (self.target - least) < NEAR_FLOOR * (most - least)):
            return
        stated, away = f"{self.target:g} {self.unit}", "a higher target"
        span = f"the least compute ({least:g}) to the most ({most:g})"
        if self.unit == "requests_per_s":  # held as ms per request: the floor is the highest rate
            stated, away = f"{cfg.budget.target:g} requests_per_s", "a lower rate"
            span = f"the most this model sustains ({1000 / least:g} requests/s) to the least ({1000 / most:g})"
        log.warning(
            "budget.target %s is two-sided and within %.0f%% of the way from %s: it drives nearly everything onto the "
            "cheapest path, often at a large cost in quality; a ceiling (budget.two_sided=false) or %s keeps "
            "that choice to the model",
            stated, 100 * NEAR_FLOOR, span, away,
        )  # fmt: skip

    def _example_range(self, cfg) -> tuple[float, float]:
        """The least and the most compute per example a classifier spends in this budget's unit:
        the least at one step (every step where halting.policy is 'none') with the fewest experts
        a step can route to, the most at the step cap with every expert."""
        cap = step_cap(cfg)
        fewest = cap if cfg.halting.policy == "none" else 1
        least = self.compute(float(fewest), fewest * self.flops.min_experts_per_step)
        return float(least), float(self.compute(float(cap)))

    @classmethod
    def _per_token(cls, cfg, length: int, vocab: int) -> Budget:
        """A language model's budget per token, refused in one line where nothing can meet it."""
        b, lm = cfg.budget, cfg.lm
        if b.requests:
            raise ConfigError("config key 'budget.requests' is set; per-request caps for model.kind='lm' are not built")
        if b.unit not in ("steps", "flops", "macs"):
            raise ConfigError(f"config key 'budget.unit' is {b.unit!r}; a language model's is steps, flops or macs")
        tokens = lm_flops(cfg, length, vocab, batch=cfg.train.eval_batch_size, exiting=lm.exits)
        act = cfg.halting.policy == "act"
        if not (lm.exits or act or tokens.mod_layers or tokens.dynamic_experts):
            raise ConfigError(
                "config key 'budget.target' is set; a language model spends a fixed compute per token "
                "unless lm.exits, halting.policy=act, lm.mod_capacity or moe.router=top_p lets it vary"
            )
        target = float(b.target)
        flops = FlopsModel(fixed=tokens.fixed, per_step=tokens.per_block, halting_per_step=tokens.per_exit)
        budget = cls(b.unit, target, b.penalty, b.weight, b.dual_lr, flops, two_sided=b.two_sided, tokens=tokens)
        least, most = _token_range(cfg, tokens, b.unit)
        if not (target > 0 and least <= target <= most):
            raise ConfigError(
                f"config key 'budget.target' is {b.target!r} {b.unit}; this language model spends {least:g} "
                f"to {most:g} {b.unit} per token"
            )
        return budget

    def of_tokens(self, reached_NxBxL, ran_NxBxL, experts_NxBxL=None):
        """A language model's compute per token in this budget's unit (differentiable)."""
        if self.unit == "steps":
            return ran_NxBxL.sum(0)
        flops = self.tokens.of_tokens(reached_NxBxL, ran_NxBxL, experts_NxBxL)
        return flops / 2.0 if self.unit == "macs" else flops

    def steps_within(self, value: float, cap: int) -> int:
        """The most steps (1..cap) whose compute, with every expert counted, is at most `value`.

        A latency cap is a promise about every request, so it goes through the calibrated p99,
        not the median that mean targets use.
        """
        fits = [s for s in range(1, cap + 1) if float(self.hard_compute(float(s))) <= value * (1 + 1e-9)]
        return max(fits, default=1)

    def hard_compute(self, steps):
        """Compute of `steps` steps as a per-request cap sees it (latency: the p99)."""
        if self.unit == "latency_ms":
            return self.cost_model.tail_latency_ms(steps, self.serving_batch)
        return self.compute(steps)  # requests_per_s: a sustained rate is a mean, not a tail

    def sample_requests(self, key: jax.Array, batch: int) -> jax.Array | None:
        """Per example, which of `budget.requests` it draws (None without requests)."""
        if not self.request_steps:
            return None
        return jax.random.choice(key, len(self.request_steps), (batch,), p=jnp.asarray(self.request_probs))

    def sample_steps(self, key: jax.Array, batch: int) -> jax.Array | None:
        """Per-example step caps drawn from the request distribution (None without one)."""
        index = self.sample_requests(key, batch)
        return None if index is None else jnp.asarray(self.request_steps, jnp.int32)[index]

    def compute(self, steps, experts=None, *, expert_budget: int | None = None):
        """Compute per example in this budget's unit, for `steps` steps and `experts` expert
        applications where the work follows them (FlopsModel.counted_experts; differentiable in
        both). The cost model's units price steps only: its executables run every expert slot
        the capacity allows, so they follow `expert_budget` instead (a MoE model served with at
        most that many experts per token), at its own calibration (`adaptive calibrate` times
        each one); a cost model without it prices the model's whole k, an overestimate."""
        if self.unit == "steps":
            return steps
        at_k = None
        if expert_budget is not None and self.cost_model is not None:
            known = self.cost_model.calibrated_key(self.serving_batch, expert_budget) in self.cost_model.fits
            at_k = expert_budget if known else None
        if self.unit == "requests_per_s":  # held as serving ms per request (see BudgetConfig)
            return self.cost_model.latency_ms(steps, self.serving_batch, at_k) / self.serving_batch
        if self.cost_model is not None:  # latency_ms, cost_per_1k or energy_j
            return getattr(self.cost_model, self.unit)(steps, self.serving_batch, at_k)
        flops = self.flops.at_steps(steps, experts)
        return flops / 2.0 if self.unit == "macs" else flops

    @property
    def held_unit(self) -> str:
        """The unit `target` and `compute` are in: a requests_per_s budget is held as serving ms
        per request (its rate's reciprocal), and is shown so."""
        return "ms_per_request" if self.unit == "requests_per_s" else self.unit

    @property
    def routes_experts(self) -> bool:
        """Whether training steers the routers' expert counts (top-p): only then does expected
        compute take them, since a top-k count is a constant and, taken, would leave the
        experts' share of a step out of the gradient that reaches halting."""
        return self.flops is not None and self.flops.dynamic_experts

    @property
    def scale(self) -> float:
        """What gaps are measured against: the part of the target that depends on steps.

        Dividing by the target itself would make a step worth a few percent of a latency target
        whose fixed overhead dominates, and the penalty too weak to hold it; the step-dependent
        part makes a step weigh the same whatever the unit.
        """
        return max(self.target - float(self.compute(0.0)), 1e-12)

    def gap(self, compute_B):
        """g = (mean compute - target) / scale: the constraint is g <= 0 (g = 0 when two-sided)."""
        return (jnp.mean(compute_B) - self.target) / self.scale

    def penalty_term(self, expected_B, multiplier):
        """The loss term for expected compute per example `expected_B` under multiplier lambda.

        hinge: weight * mean(relu(c - target)) / scale, zero under the budget.
        two-sided augmented Lagrangian of g = 0: lambda * g + weight / 2 * g^2; the quadratic
        term pulls toward the target on its own and damps the oscillation of plain dual ascent.
        ceiling (the default), the augmented Lagrangian of g <= 0 with rho = weight (Rockafellar
        1973; Nocedal & Wright, Numerical Optimization, sec. 17.4):

            psi(g, lambda) = lambda * g + rho / 2 * g^2   if lambda + rho * g > 0
                           = -lambda^2 / (2 rho)          otherwise,

        i.e. (max(0, lambda + rho g)^2 - lambda^2) / (2 rho), with d psi / dg = max(0, lambda + rho g).
        It is the two-sided term wherever the constraint is active, so over the budget both push
        compute down alike; under it the gradient is exactly 0 and, at lambda = 0, so is the
        penalty, so a model that needs less than the budget is left to the task loss. The branch
        form (not the squared max) keeps the active value bit-equal to the two-sided one; rho = 0
        is the limit lambda * g, the plain Lagrangian.
        """
        if self.penalty == "hinge":
            return self.weight * jnp.mean(jnp.maximum(expected_B - self.target, 0.0)) / self.scale
        gap = self.gap(expected_B)
        if self.two_sided:
            return multiplier * gap + 0.5 * self.weight * gap**2
        if self.weight == 0:  # the limit rho -> 0: plain Lagrangian, lambda >= 0 keeps it a ceiling
            return multiplier * gap
        active = multiplier + self.weight * gap > 0
        inactive = -jnp.square(multiplier) / (2.0 * self.weight)
        return jnp.where(active, multiplier * gap + 0.5 * self.weight * gap**2, inactive)

    def dual_step(self, multiplier, realized_B):
        """One dual-ascent step on the multiplier from realized compute: lambda + dual_lr * g,
        projected onto lambda >= 0 for a ceiling (so it decays to 0 while the model is under the
        budget), unprojected when two-sided. A hinge has no multiplier."""
        if self.target is None or self.penalty != "lagrangian":
            return multiplier
        stepped = multiplier + self.dual_lr * self.gap(realized_B)
        return stepped if self.two_sided else jnp.maximum(stepped, 0.0)


def _per_request_ms(rate: float, key: str) -> float:
    """A throughput of `rate` requests/s as the serving milliseconds each request may take."""
    if not rate > 0:
        raise ConfigError(f"config key '{key}' is {rate!r} requests_per_s; a throughput must be positive")
    return 1000.0 / float(rate)


def check_memory_budget(cfg) -> None:
    """A memory budget is a positive number of MB for a classifier's export; nothing else."""
    b = cfg.budget
    if b.requests:
        raise ConfigError("config key 'budget.requests' is set; a memory_mb budget is one ceiling, not per request")
    if cfg.model.kind == "lm":
        raise ConfigError(
            "config key 'budget.unit' is 'memory_mb', which a language model's training does not take; exported with "
            "--precision or --prune, its meta.json gives each point's memory: serve the one that fits (serve --point)"
        )
    if b.target is None or not b.target > 0:
        raise ConfigError(f"config key 'budget.target' is {b.target!r} memory_mb; a memory budget must be positive")


def _token_range(cfg, tokens: LMFlops, unit: str) -> tuple[float, float]:
    """The least and the most compute per token a language model spends, in `unit`."""
    act = cfg.halting.policy == "act"
    least, most = tokens.extremes(cfg.lm.exits or act)
    if unit == "steps":
        return (1.0 if cfg.lm.exits or act else float(tokens.blocks - len(tokens.mod_layers))), float(tokens.blocks)
    if unit == "macs":
        return least / 2.0, most / 2.0
    return least, most
