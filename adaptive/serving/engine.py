"""An inference engine for serving: one model, ahead-of-time compiled for a few batch sizes.

`Engine.from_artifact(ART)` (a `jax.export` artifact) or `Engine.from_run(DIR)` (a checkpoint)
compiles `serve(x, budget)` once per batch-size bucket and runs every executable once before it
is used, so in steady state nothing compiles (tests count XLA compilations). A bucket for which
the artifact carries a function of its own batch size uses it: its halting loop compacts. A request batch is
padded to the smallest bucket that holds it (padding rows are copies of the batch's own rows
with budget 1, so they never hold the batch) and split when larger than the largest bucket;
padding and splitting are numpy, on the host, so they compile nothing either.

Budgets arrive in any unit the model can price (`steps`, `flops`, `macs`, and with a cost
model `latency_ms`, `cost_per_1k`, `energy_j`) and become step caps: the most steps whose
compute fits, through the table meta.json carries (a latency cap through the p99). On a MoE
model a FLOPs or MACs budget also buys steps at each smaller expert budget compiled, through
meta.json's table for that budget: one too small for the trained experts may fit fewer.

`run_grouped` runs a batch as groups of similar step budgets, tightest first, and reports when
each group was done: a request that may ponder 20 steps no longer holds one that may take 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adaptive.config import BUDGET_UNITS as UNITS
from adaptive.inference.artifact_meta import ArtifactError

PER_EXPERT = ("flops", "macs")  # the units whose price follows a MoE's experts per token
# a latency budget is a ceiling on each request's time: priced at the cost model's p99, which
# is above the mean a training target is held to
P99 = {"latency_ms_p99": " at the cost model's p99"} | {unit: "" for unit in UNITS}


class BudgetError(ValueError):
    """A budget the model cannot meet or cannot read; one line. `below`: a readable budget under
    the model's least run (another model, a fallback, may still keep it)."""

    def __init__(self, message: str, below: bool = False):
        super().__init__(message)
        self.below = below


@dataclass
class Result:
    prediction: np.ndarray  # int32 [B]
    confidence: np.ndarray  # float32 [B]
    steps: np.ndarray  # int32 [B]
    experts: np.ndarray  # int32 [B]
    done_s: np.ndarray  # float [B]: perf_counter time at which each row's group finished


class Engine:
    def __init__(
        self,
        serve,
        input_shape,
        cap: int,
        compute_at_steps: dict,
        *,
        buckets=(1, 8, 32),
        name="",
        meta=None,
        by_batch=None,
    ):
        """`serve`: one function, or a dict {experts per token (None: all): function} for MoE;
        `meta`: the artifact's meta.json, when it comes from one; `by_batch`: {batch size:
        function} used instead of serve[None] for buckets of that size (an artifact's functions
        compiled for one batch size, whose halting loops compact)."""
        self.input_shape, self.cap, self.table, self.name = tuple(input_shape), cap, compute_at_steps, name
        self.meta = meta or {}
        self.buckets = tuple(sorted(set(buckets)))
        serves = serve if isinstance(serve, dict) else {None: serve}
        self.expert_budgets = sorted(k for k in serves if k is not None)  # the smaller ones compiled
        self._exec = {}
        self.warmup: list[tuple[int | None, int, int, float]] = []  # (experts, steps taken, rows, ms)
        by_batch = by_batch or {}
        self.compacted_buckets = sorted(b for b in self.buckets if b in by_batch)
        for k, serve_k in serves.items():
            for b in self.buckets:
                fn = by_batch[b] if k is None and b in by_batch else serve_k
                x_spec = jax.ShapeDtypeStruct((b, *self.input_shape), jnp.float32)
                self._exec[k, b] = jax.jit(fn).lower(x_spec, jax.ShapeDtypeStruct((b,), jnp.int32)).compile()
                zeros = np.zeros((b, *self.input_shape), np.float32)
                for budget in (1, self.cap):  # run once, then timed: a first estimate of service times
                    jax.block_until_ready(self._exec[k, b](zeros, np.full(b, budget, np.int32)))
                    start = time.perf_counter()
                    out = jax.block_until_ready(self._exec[k, b](zeros, np.full(b, budget, np.int32)))
                    ms = 1e3 * (time.perf_counter() - start)  # before reading the outputs: the first
                    # np.max of a jax array is slow, and would be timed as the model's run
                    self.warmup.append((k, int(np.max(out[2])), b, ms))

    @classmethod
    def from_artifact(
        cls, path: str | Path, *, buckets=(1, 8, 32), expert_budgets: bool = True, point=None, flag: str = "--point"
    ) -> Engine:
        """`expert_budgets=False`: only the trained expert budget (a fallback never degrades);
        `point` = (precision, prune): that operating point of the artifact (adaptive.serving.point_meta);
        `flag`: the serve flag that asked for it (`--fallback-point` for a fallback rung), which a
        refusal names, so that a fallback over the memory budget is not taken for the primary."""
        from adaptive.inference.export import load_artifact

        exported, meta = load_artifact(path, point=point)
        if point is not None and tuple(point) != ("fp32", 0.0):
            from adaptive.serving.point_meta import point_meta

            meta = point_meta(meta, tuple(point), str(path))
        ceiling, memory = meta.get("memory_budget_mb"), meta.get("memory")
        if ceiling is not None and memory is not None and memory["total_mb"] > ceiling:
            fits = [f"{p['precision']},{p['prune']:g}" for p in meta.get("operating_points", []) if p.get("fits")]
            hint = f"serve a point that fits: {flag} {fits[0]}" if fits else "export a --precision or --prune that fits"
            asked = f" ({flag} {point[0]},{point[1]:g})" if point is not None else ""
            raise ArtifactError(
                f"{path}{asked} needs {memory['total_mb']:g} MB at batch {memory['batch']}, over its memory budget of "
                f"{ceiling:g} MB; nothing served ({hint})"
            )
        serves = {None: exported.call}
        for k in meta.get("expert_variants", {}) if expert_budgets else ():  # MoE: the smaller budgets' functions
            serves[int(k)] = load_artifact(path, experts=int(k))[0].call
        by_batch = {
            int(b): load_artifact(path, batch=int(b))[0].call
            for b in meta.get("batch_variants", {})
            if int(b) in buckets
        }
        shape = tuple(meta["input"]["shape"][1:])
        return cls(
            serves,
            shape,
            meta["caps"]["steps"],
            meta["compute_at_steps"],
            buckets=buckets,
            name=str(path) if point is None else f"{path} ({point[0]},{point[1]:g})",
            meta=meta,
            by_batch=by_batch,
        )

    @classmethod
    def from_run(cls, workdir: str | Path, *, buckets=(1, 8, 32)) -> Engine:
        from adaptive.config import step_cap, to_dict
        from adaptive.inference.export import compute_table, experts_table, serving_function
        from adaptive.inference.restore import load_run

        run = load_run(workdir)
        serve = serving_function(run.graphdef, run.params)
        caps = {"experts_per_token": run.cfg.moe.k if run.cfg.moe.enabled else None}
        meta = {"caps": caps, "config": to_dict(run.cfg), "flops_at_expert_budgets": experts_table(run)}
        return cls(
            serve,
            run.spec.input_shape,
            step_cap(run.cfg),
            compute_table(run),
            buckets=buckets,
            name=str(workdir),
            meta=meta,
        )

    # -- budgets -----------------------------------------------------------------------------

    def steps_for(self, value: float, unit: str = "steps", experts: int | None = None) -> int:
        """The step cap of a budget of `value` in `unit` (the most steps that fit), at `experts`
        per token on a MoE model (None: its trained k; only FLOPs and MACs depend on it)."""
        if unit not in UNITS:
            raise BudgetError(f"budget unit {unit!r} is not one of {', '.join(UNITS)}")
        if unit == "memory_mb":
            return self._steps_in_memory(value)
        column = _column(unit)
        rate = None
        if unit == "requests_per_s" and "latency_ms" in self.table:
            # a sustained rate: the median batch time of the meta's serving batch, shared by its rows
            batch, rate = self.serving_batch, value
            if not (np.isfinite(value) and value > 0):
                raise BudgetError(f"budget {value:g} requests_per_s must be a positive rate")
            # a rate too small for float64's ms (1e-310 requests_per_s) is any time at all: every step
            value = min(batch * 1000.0 / value, sys.float_info.max)
            column, unit = "latency_ms", f"ms per batch of {batch}"
        if column not in self.table:
            raise BudgetError(f"budget unit {unit!r} needs a cost model; this model has {', '.join(self.table)}")
        if not np.isfinite(value):
            raise BudgetError(f"budget {value:g} {unit} is not a finite number")
        table = self.compute_of(np.arange(1, self.cap + 1), unit, experts) if unit in PER_EXPERT else self.table[column]
        if value < table[0] and rate is not None:  # said in the unit asked
            most = self.serving_batch * 1000.0 / table[0]
            raise BudgetError(
                f"budget {rate:g} requests_per_s is above what this model sustains at one step ({most:g} "
                f"requests_per_s at batch {self.serving_batch}, the cost model's median"
                + (f"; it runs all {self.cap} steps)" if self.fixed_depth else ")"),
                below=True,
            )
        if value < table[0]:
            least = f"one step of this model ({table[0]:g} {unit}{P99[column]})"
            if self.fixed_depth:  # its least run is every step
                least = f"this static model's least run ({table[-1]:g} {unit}{P99[column]}: all its {self.cap} steps)"
            raise BudgetError(f"budget {value:g} {unit} is below {least}", below=True)
        return int(np.searchsorted(np.asarray(table), value * (1 + 1e-9), side="right"))

    def _steps_in_memory(self, value: float) -> int:
        """Every step (memory does not grow with steps) when the compiled function fits in `value`
        MB, else a BudgetError: the request is refused before it runs."""
        memory = self.meta.get("memory")
        if memory is None:
            raise BudgetError("budget unit 'memory_mb' needs an artifact whose meta.json has its memory")
        if not (np.isfinite(value) and value >= memory["total_mb"]):
            raise BudgetError(
                f"budget {value:g} memory_mb is below this model's {memory['total_mb']:g} MB "
                f"(compiled at batch {memory['batch']}, weights included)",
                below=np.isfinite(value),
            )
        return self.cap

    @property
    def units(self) -> tuple[str, ...]:
        """The budget units this model can price (cost-model units only with a cost model)."""
        have = set(self.table) | ({"memory_mb"} if self.meta.get("memory") else set())
        have |= {"requests_per_s"} if "latency_ms" in self.table else set()
        return tuple(unit for unit in UNITS if unit in have)

    @property
    def serving_batch(self) -> int:
        """The batch the compute table's latency columns were calibrated at (budget.serving_batch)."""
        budget = self.meta.get("budget") or (self.meta.get("config") or {}).get("budget") or {}
        return int(budget.get("serving_batch", 1))

    @property
    def fixed_depth(self) -> bool:
        """A static model: it runs all its steps whatever the step budget."""
        return (self.meta.get("config") or {}).get("halting", {}).get("policy") == "none"

    def steps_within(self, value: float | None, unit: str = "steps", experts: int | None = None) -> int:
        """The most steps this model may take within a budget of `value` in `unit` (None: no
        budget, the cap), at `experts` per token; 0 when not even its least run fits (a static
        model's least run is all its steps) or it cannot price the unit: then it cannot answer
        within that budget."""
        if value is None:
            return self.cap
        try:
            steps = self.steps_for(value, unit, experts)
        except BudgetError:
            return 0
        return 0 if self.fixed_depth and steps < self.cap else steps

    def least_budget(self, unit: str) -> float | None:
        """The smallest budget in `unit` this model answers within: its least run (a static
        model's is all its steps) priced in `unit`; None where it cannot price the unit, or for a
        rate (higher is harder: there is no least)."""
        if unit == "memory_mb":
            return (self.meta.get("memory") or {}).get("total_mb")
        column = _column(unit)
        if unit == "requests_per_s" or column not in self.table:
            return None
        return float(self.compute_of(np.array([self.cap if self.fixed_depth else 1]), unit)[0])

    def expert_steps_within(self, value: float | None, unit: str) -> tuple[int, ...] | None:
        """`steps_within` at each smaller expert budget, most experts first (the controller's
        order): a FLOPs budget too small for the trained experts may fit fewer. None where the
        expert budget does not change the price (no smaller budgets, or another unit)."""
        if value is None or unit not in PER_EXPERT or not self.expert_budgets:
            return None
        return tuple(self.steps_within(value, unit, k) for k in sorted(self.expert_budgets, reverse=True))

    def within_budget(self, steps: int, value: float, unit: str, experts: int | None = None) -> bool:
        """Whether a run of `steps` steps kept to a budget of `value` in `unit`: memory is the
        model's whatever its steps; a rate is met when the batch time allows it (higher is better)."""
        if unit == "memory_mb":
            return bool(self.meta["memory"]["total_mb"] <= value)
        if unit == "requests_per_s":
            batch = self.serving_batch
            median_ms = self.table["latency_ms"][int(np.clip(steps, 1, self.cap)) - 1]  # a rate is a mean
            return bool(median_ms <= batch * 1000.0 / value * (1 + 1e-9))
        return bool(self.compute_of(steps, unit, experts) <= value * (1 + 1e-9))

    def compute_of(self, steps: np.ndarray, unit: str, experts: int | None = None) -> np.ndarray:
        """The compute in `unit` of runs that took `steps` steps (at `experts` per token on a
        MoE model: FLOPs and MACs from its table for that expert budget)."""
        column = _column(unit)
        table = self.table[column]
        by_experts = self.meta.get("flops_at_expert_budgets") or {}
        if experts is not None and unit in PER_EXPERT and str(experts) in by_experts:
            scale = 0.5 if unit == "macs" else 1.0
            table = [scale * f for f in by_experts[str(experts)]]
        return np.asarray(table)[np.clip(np.asarray(steps), 1, self.cap) - 1]

    # -- running -----------------------------------------------------------------------------

    def run(self, x: np.ndarray, budget: np.ndarray, experts: int | None = None) -> Result:
        """Outputs for a batch under per-row step budgets (clipped to 1..cap, as in the graph)
        and, for MoE models, an expert budget per token for the whole batch (None: all)."""
        if experts not in self.expert_budgets:
            experts = None  # the model's own k (or more than it has): as trained
        x = np.asarray(x, np.float32)
        if len(x) == 0:
            raise ValueError("empty batch: run at least one row")
        budget = np.clip(np.asarray(budget, np.int32), 1, self.cap)
        outs, done = [], []
        top = self.buckets[-1]
        for start in range(0, len(x), top):
            xs, bs = x[start : start + top], budget[start : start + top]
            bucket = next(b for b in self.buckets if b >= len(xs))
            pad = bucket - len(xs)
            # Copies, not zeros: with expert capacity, identical zero rows all route to the same
            # experts and take their slots from real tokens (parity, one expert a token, 5 rows in
            # a bucket of 16: 0.93 instead of 0.98); copies load each expert as the batch does.
            padded_x = np.concatenate([xs, xs[np.arange(pad) % len(xs)]]) if pad else xs
            padded_b = np.concatenate([bs, np.ones(pad, np.int32)]) if pad else bs
            out = jax.device_get(self._exec[experts, bucket](padded_x, padded_b))
            outs.append([np.asarray(o)[: len(xs)] for o in out])
            done.append(np.full(len(xs), time.perf_counter()))
        fields = [np.concatenate([o[i] for o in outs]) for i in range(4)]
        return Result(*fields, np.concatenate(done))

    def run_grouped(self, x: np.ndarray, budget: np.ndarray, groups: int = 2) -> Result:
        """The batch as up to `groups` runs of similar step budgets, tightest first; each row's
        `done_s` is when its own group finished."""
        budget = np.clip(np.asarray(budget, np.int32), 1, self.cap)
        results = [(part, self.run(np.asarray(x)[part], budget[part])) for part in self.groups(budget, groups)]
        out = Result(*(np.zeros(len(budget), dtype) for dtype in (np.int32, np.float32, np.int32, np.int32, float)))
        for part, r in results:
            for name in ("prediction", "confidence", "steps", "experts", "done_s"):
                getattr(out, name)[part] = getattr(r, name)
        return out

    def groups(self, budget: np.ndarray, groups: int = 2) -> list[np.ndarray]:
        """Row indices in up to `groups` runs of similar step budgets, tightest first."""
        budget = np.clip(np.asarray(budget, np.int32), 1, self.cap)
        order = np.argsort(budget, kind="stable")
        parts = [p for p in np.array_split(order, min(groups, len(order))) if len(p)]
        return _merge_equal_budgets(parts, budget)


def _column(unit: str) -> str:
    """The compute table's column a budget in `unit` is priced by: a latency at its p99 (a budget
    bounds each request, not their mean), every other unit by its own."""
    return "latency_ms_p99" if unit == "latency_ms" else unit


def _merge_equal_budgets(parts: list[np.ndarray], budget: np.ndarray) -> list[np.ndarray]:
    """Adjacent groups whose budgets overlap are one group: splitting equal budgets saves nothing."""
    merged = [parts[0]]
    for part in parts[1:]:
        if budget[part].min() <= budget[merged[-1]].max():
            merged[-1] = np.concatenate([merged[-1], part])
        else:
            merged.append(part)
    return merged


def fallback_engines(fallback: Engine | dict[str, Engine] | None) -> dict[str, Engine]:
    """The fallback rungs by name: one engine is the rung "fallback"; None, none."""
    if fallback is None:
        return {}
    return dict(fallback) if isinstance(fallback, dict) else {"fallback": fallback}
