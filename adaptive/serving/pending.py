"""A request waiting in the classifier server's queue, and what the controller is told of it
when its batch is about to run: its budget as the most steps each model may take within it.

A latency budget is priced twice: by the cost model (the bare model's p99, at parse time) and,
under the adaptive policy, by this server's own recent runs (`Controller.steps_within_ms`),
which add the hand-off to the worker and the batch a row shares to what calibration timed;
a request gets the fewer steps. Answering `ok` past a budget the cost model alone admitted is
what a served latency budget would otherwise do on a loaded machine. The static policies, the
baselines, price every budget through the cost model alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from adaptive.serving.controller import Controller
from adaptive.serving.decisions import Request
from adaptive.serving.engine import Engine


@dataclass
class Pending:
    x: np.ndarray
    steps: int
    priority: int
    arrival: float
    future: asyncio.Future = field(repr=False)
    budget_value: float | None = None  # the finite budget as asked (None: none given)
    unit: str = "steps"  # the budget's unit
    expert_steps: tuple[int, ...] | None = None  # a MoE primary's steps at its smaller expert budgets


def asked(item: Pending, default_steps: int) -> tuple[float, str]:
    """The budget a request asked for, in its unit (none given: the default step budget)."""
    return (item.budget_value, item.unit) if item.budget_value is not None else (default_steps, "steps")


def to_request(
    item: Pending, waited_ms: float, rows: int, controller: Controller, engines: dict[str, Engine], default_steps: int
) -> Request:
    """What the controller is told of `item` in a batch of `rows`; `engines`: "primary" and the
    fallbacks, in the controller's order. A latency budget is priced at the whole batch's rows
    (a run holds at most those) and at the tail of the server's runs (it bounds this run, not a
    mean of many)."""
    fallbacks = {name: engine for name, engine in engines.items() if name != "primary"}
    fallback_steps = tuple(engine.steps_within(*asked(item, default_steps)) for engine in fallbacks.values())
    steps, expert_steps = item.steps, item.expert_steps
    if item.unit == "latency_ms" and item.budget_value is not None and controller.mode == "adaptive":

        def within(name: str, experts: int | None, most: int) -> int:
            got = controller.steps_within_ms(name, experts, item.budget_value, most, rows)
            return 0 if engines[name].fixed_depth and got < engines[name].cap else got  # it runs all or none

        steps = within("primary", None, item.steps)
        if len(controller.expert_budgets) > 1:  # fewer experts per token run quicker
            expert_steps = tuple(within("primary", k, item.steps) for k in controller.expert_budgets[1:])
        fallback_steps = tuple(within(name, None, most) for name, most in zip(fallbacks, fallback_steps, strict=True))
    return Request(steps, waited_ms, item.priority, fallback_steps, expert_steps)


def too_quick(
    item: Pending, request: Request, rows: int, controller: Controller, engines: dict[str, Engine], default_steps: int
) -> str:
    """A rejection's reason where `item`'s latency budget is under every run this server makes
    now, on each model whose cost model admits it ('' otherwise: refused for another reason)."""
    if item.unit != "latency_ms" or request.steps or any(request.fallback_steps) or any(request.expert_steps or ()):
        return ""
    admitted = [name for name, e in engines.items() if e.steps_within(*asked(item, default_steps))]
    if not admitted:
        return ""  # no cost model prices a step within it (refused with a 400 before it queued)
    least_run = {name: engines[name].cap if engines[name].fixed_depth else 1 for name in admitted}  # all or one step
    least = min(controller.service[name, None].tail_ms(least_run[name], rows) for name in admitted)
    return (
        f"its latency budget of {item.budget_value:g} ms is under this server's runs now: {least:.3g} ms "
        f"for a batch of {rows} at its least run, at their p95 (the cost model times the bare model)"
    )
