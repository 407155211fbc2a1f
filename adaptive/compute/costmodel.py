"""A cost model: compute (steps, experts, batch) -> latency, cost and energy on one machine.

`adaptive calibrate` times a run's compiled inference at several forced depths and batch sizes
and fits, per (batch size, experts per token), latency_ms = intercept + per_step * steps, once
to the median latencies (for mean targets) and once to the p99 (for hard per-request caps). Cost
and energy follow from latency: a request served in a batch of b costs latency x price per
hour / 3600 / b, and uses power x latency / b joules. The JSON file carries a fingerprint of the
model it was measured on; loading it for another model or config is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


class CostModelError(ValueError):
    """A cost model file that is missing, corrupted, or for another model; one line."""


MOE_COST_KEYS = (
    "num_experts",
    "k",
    "router",
    "capacity_factor",
    "eval_capacity_factor",
    "dropless",
    "eval_dropless",
    "dispatch",
    "block_size",
    "expert_hidden",
    "num_groups",
)


def fingerprint(cfg, input_shape: tuple[int, ...]) -> str:
    """What a latency depends on: the network (model and moe sections, the halting policy and its
    cap) and the input shape; not the training hyper-parameters (tau, budgets, optimizer)."""
    from adaptive import config as config_lib

    d = config_lib.to_dict(cfg)
    halting = {"policy": d["halting"]["policy"], "max_steps": d["halting"]["max_steps"]}
    # Only the experts' settings that change the executed work, so that a new MoE option (or
    # experts switched off) does not invalidate every calibration made before it.
    moe = {k: d["moe"][k] for k in MOE_COST_KEYS} if cfg.moe.enabled else None
    if moe and cfg.moe.router == "top_p":
        moe["top_p"] = cfg.moe.top_p
    key = json.dumps(
        {"model": d["model"], "halting": halting, "moe": moe, "input_shape": list(input_shape)}, sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fit:
    intercept_ms: float
    per_step_ms: float
    points: list  # [[steps, median_ms], ...] as measured


@dataclass(frozen=True)
class CostModel:
    fingerprint: str
    machine: str
    price_per_hour: float
    power_watts: float
    fits: dict  # "b{batch}_k{experts}" -> Fit of median latencies
    tail_fits: dict = field(default_factory=dict)  # the same keys -> Fit of p99 latencies

    @staticmethod
    def key(batch: int, experts: int | None) -> str:
        return f"b{batch}_k{experts or 0}"

    def calibrated_key(self, batch: int, experts: int | None) -> str:
        """The key of (batch, experts); experts None ("all") is a MoE model's largest calibrated
        expert budget, since `adaptive calibrate` times a MoE model at each k and never "all"."""
        key = self.key(batch, experts)
        if experts is None and key not in self.fits:
            ks = [int(k.partition("_k")[2]) for k in self.fits if k.startswith(f"b{batch}_k")]
            key = self.key(batch, max(ks)) if ks else key
        return key

    def calibrated(self) -> str:
        """The calibrations it holds, in words: "batch 1, batch 8" ("batch 4 at 2 experts")."""

        def words(key: str) -> tuple[int, int, str]:
            batch, experts = (int(part) for part in key[1:].split("_k"))
            return batch, experts, f"batch {batch}" + (f" at {experts} experts" if experts else "")

        return ", ".join(said for *_, said in sorted(map(words, self.fits))) or "none"

    def fit(self, batch: int, experts: int | None = None) -> Fit:
        try:
            return self.fits[self.calibrated_key(batch, experts)]
        except KeyError:
            known = self.calibrated()
            raise CostModelError(
                f"no calibration for batch {batch} and {experts or 'all'} experts; have {known}: run "
                f"`adaptive calibrate --batches {batch}` on the run, or use a calibrated batch"
            ) from None

    def latency_ms(self, steps, batch: int = 1, experts: int | None = None):
        f = self.fit(batch, experts)
        return f.intercept_ms + f.per_step_ms * steps

    def tail_latency_ms(self, steps, batch: int = 1, experts: int | None = None):
        """p99 latency: what a hard per-request latency cap must be converted with (the median
        when the calibration recorded no tail)."""
        f = self.tail_fits.get(self.calibrated_key(batch, experts)) or self.fit(batch, experts)
        return f.intercept_ms + f.per_step_ms * steps

    def cost_per_1k(self, steps, batch: int = 1, experts: int | None = None):
        return self.latency_ms(steps, batch, experts) / 3.6e6 * self.price_per_hour / batch * 1000

    def energy_j(self, steps, batch: int = 1, experts: int | None = None):
        return self.power_watts * self.latency_ms(steps, batch, experts) / 1000 / batch

    def save(self, path: str | Path) -> None:
        body = {
            **asdict(self),
            "fits": {k: asdict(v) for k, v in self.fits.items()},
            "tail_fits": {k: asdict(v) for k, v in self.tail_fits.items()},
        }
        Path(path).write_text(json.dumps(body, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, *, expect_fingerprint: str | None = None) -> CostModel:
        path = Path(path)
        if not path.is_file():
            raise CostModelError(f"no cost model at {path}; run `adaptive calibrate --workdir DIR` first")
        try:
            body = json.loads(path.read_text())
            if not isinstance(body, dict):
                raise ValueError(f"the file holds a {type(body).__name__}, not an object")
            model = cls(
                str(body["fingerprint"]),
                str(body["machine"]),
                _number(body["price_per_hour"], "price_per_hour"),
                _number(body["power_watts"], "power_watts"),
                _fits(body["fits"], "fits"),
                _fits(body.get("tail_fits", {}), "tail_fits"),  # files from before tails were recorded have none
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CostModelError(f"{path} is not a valid cost model ({type(e).__name__}: {e})") from None
        for key, value in (("price_per_hour", model.price_per_hour), ("power_watts", model.power_watts)):
            if not (math.isfinite(value) and value >= 0):  # a cost or energy budget would price with it
                raise CostModelError(f"{path} is not a valid cost model ({key} is {value}; must be finite and >= 0)")
        if not model.fits:
            raise CostModelError(f"{path} is not a valid cost model (no calibrated batch size in its fits)")
        for key, fit in [*model.fits.items(), *model.tail_fits.items()]:
            if not (math.isfinite(fit.intercept_ms) and math.isfinite(fit.per_step_ms) and fit.per_step_ms >= 0):
                raise CostModelError(
                    f"{path} is not a valid cost model (fit {key}: intercept {fit.intercept_ms}, per step "
                    f"{fit.per_step_ms}; must be finite, per step >= 0)"
                )
            if fit.intercept_ms + fit.per_step_ms <= 0:  # one step would take no time, or less
                raise CostModelError(
                    f"{path} is not a valid cost model (fit {key} prices one step at "
                    f"{fit.intercept_ms + fit.per_step_ms:g} ms; a latency is > 0)"
                )
        if expect_fingerprint is not None and model.fingerprint != expect_fingerprint:
            raise CostModelError(
                f"{path} was calibrated for another model or config (fingerprint {model.fingerprint} != "
                f"{expect_fingerprint}); calibrate this run instead"
            )
        warn_other_machine(model.machine, str(path))
        return model


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # json: true would read as 1.0
        raise ValueError(f"{key} is {value!r}, not a number")
    return float(value)


def _fits(fits, key: str) -> dict[str, Fit]:
    """A cost model file's fits, each {intercept_ms, per_step_ms, points}, checked for shape."""
    if not isinstance(fits, dict):
        raise ValueError(f"{key} is {type(fits).__name__}, not an object of fits")
    read = {}
    for name, fit in fits.items():
        if not isinstance(fit, dict) or not isinstance(fit.get("points", []), list):
            raise ValueError(f"{key}.{name} is not {{intercept_ms, per_step_ms, points: a list}}")
        intercept = _number(fit["intercept_ms"], f"{key}.{name}.intercept_ms")
        read[name] = Fit(intercept, _number(fit["per_step_ms"], f"{key}.{name}.per_step_ms"), fit.get("points", []))
    return read


def fit_line(points: list[tuple[float, float]]) -> Fit:
    """Least-squares latency = intercept + per_step * steps (a single point: all per step)."""
    steps, ms = np.array(points, dtype=float).T
    if len(set(steps)) == 1:
        return Fit(0.0, float(ms.mean() / steps[0]), [list(p) for p in points])
    slope, intercept = np.polyfit(steps, ms, 1)
    if slope < 0:  # more steps cannot be faster: timer noise swamped the per-step cost
        slope, intercept = 0.0, float(np.median(ms))
    if intercept + slope * steps.min() <= 0:  # a line through noise that prices the fewest steps at <= 0 ms
        return Fit(0.0, float(np.mean(ms / steps)), [list(p) for p in points])
    return Fit(float(intercept), float(slope), [list(p) for p in points])


@functools.cache
def warn_other_machine(calibrated_on: str, what: str) -> None:
    """A warning, once per (machine, file), where `what` was calibrated on another machine: its
    latencies, and the cost and energy priced from them, are that machine's, not this one's."""
    here = machine()
    if _without_device_count(calibrated_on) != _without_device_count(here):
        logging.getLogger(__name__).warning(
            "%s was calibrated on %s; this is %s: its latency, cost and energy prices are that machine's "
            "(`adaptive calibrate` here refits them)",
            what, calibrated_on, here,
        )  # fmt: skip


def machine() -> str:
    """What a latency depends on: the accelerator's kind and the host's cores. (It also names how
    many devices are visible, which does not change one executable's latency: a host's CPU split
    into several XLA devices, a subset of its GPUs. `warn_other_machine` compares it without.)"""
    import os

    import jax

    return f"{platform.machine()} {jax.devices()[0].device_kind} x{jax.device_count()} ({os.cpu_count()} cpus)"


def _without_device_count(described: str) -> str:
    return re.sub(r" x\d+ \(", " (", described)
