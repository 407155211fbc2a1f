"""Which operating point each request gets under load: the degradation ladder and its rule.

The ladder, in order: (1) a lower step budget (forced early exit), (2) the smaller fallback
model, (3) reject (the deadline cannot be met) or defer (the queue is full: retry later).

The rule is a deadline check against *measured* service times. When a batch is dispatched,
each request has waited `waited_ms`; what is left of its latency allowance (headroom x SLA,
less for lower priorities) must cover the batch's run. The controller keeps, per model and per
step count, a running estimate of how long a batch takes (updated from every batch it runs),
and gives each request the most steps, up to what it asked for, whose estimated run fits its
slack; if not even one step fits, the fallback model if its run fits; otherwise the request is
rejected at once, since a late answer counts as wrong and its compute is better spent on
requests that can still make it.

Why not AIMD on a step cap, tried first: a window of completed latencies lags a spike by the
time the queue takes to build, and the p99 went to 127 ms under a 30 ms SLA (measured with
`adaptive bench serve`). Why not the calibrated cost model alone: this machine's speed drifts
by tens of percent (experiments/budget_targeting); estimates refreshed from every batch follow
the speed the server actually has. The queueing delay each request already carries is the
early signal, and it reacts within one batch.

`mode="static"` is the baseline: every request gets its requested budget on the primary model,
nothing is shed or deferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred")


@dataclass
class Decision:
    status: str  # ok | degraded | fallback | rejected | deferred
    model: str | None  # "primary", "fallback" or None
    steps: int


class ServiceTimes:
    """Running estimates of a batch's run time (ms) by the most steps any of its rows takes."""

    def __init__(self, cap: int, smoothing: float = 0.2):
        self.cap, self.smoothing = cap, smoothing
        self.ms = np.full(cap + 1, np.nan)  # index = steps

    def observe(self, steps: int, ms: float) -> None:
        s = int(np.clip(steps, 1, self.cap))
        old = self.ms[s]
        self.ms[s] = ms if np.isnan(old) else (1 - self.smoothing) * old + self.smoothing * ms

    def estimate(self, steps: int) -> float:
        """Measured when seen; else a line through what was seen (0 before anything was)."""
        known = np.flatnonzero(~np.isnan(self.ms))
        if known.size == 0:
            return 0.0
        if self.ms[steps] == self.ms[steps]:  # not NaN
            return float(self.ms[steps])
        if known.size == 1:  # one point: scale it, keeping its share of fixed cost as if all per step
            return float(self.ms[known[0]] * steps / known[0])
        slope, intercept = np.polyfit(known, self.ms[known], 1)
        return float(intercept + max(slope, 0.0) * steps)

    def most_steps_within(self, slack_ms: float, requested: int) -> int:
        """The most steps (<= requested) whose estimated run fits `slack_ms`; 0 if none."""
        for s in range(requested, 0, -1):
            if self.estimate(s) <= slack_ms:
                return s
        return 0


class Controller:
    def __init__(
        self,
        cap: int,
        sla_ms: float,
        *,
        mode: str = "adaptive",
        has_fallback: bool = False,
        fallback_cap: int = 1,
        headroom: float = 0.8,
        max_queue: int = 1024,
    ):
        if mode not in ("adaptive", "static"):
            raise ValueError(f"controller mode {mode!r} is not 'adaptive' or 'static'")
        self.full, self.sla_ms, self.mode, self.has_fallback = cap, sla_ms, mode, has_fallback
        self.headroom, self.max_queue = headroom, max_queue
        self.service = {"primary": ServiceTimes(cap), "fallback": ServiceTimes(max(fallback_cap, 1))}
        self.fallback_cap = max(fallback_cap, 1)

    def admit(self, queue_length: int) -> bool:
        """False: defer (the queue is full). Static mode queues everything."""
        return self.mode == "static" or queue_length < self.max_queue

    def slack_ms(self, waited_ms: float, priority: int) -> float:
        """What is left of a request's allowance: lower priorities get less, so they degrade first."""
        return self.headroom * self.sla_ms / (1 + 0.5 * max(priority, 0)) - waited_ms

    def decide(self, requested_steps: int, waited_ms: float, priority: int = 0) -> Decision:
        requested = int(np.clip(requested_steps, 1, self.full))
        if self.mode == "static":
            return Decision("ok", "primary", requested)
        slack = self.slack_ms(waited_ms, priority)
        steps = self.service["primary"].most_steps_within(slack, requested)
        if steps:
            return Decision("ok" if steps == requested else "degraded", "primary", steps)
        if self.has_fallback and self.service["fallback"].estimate(self.fallback_cap) <= slack:
            return Decision("fallback", "fallback", self.fallback_cap)
        if waited_ms + self.service["primary"].estimate(1) <= self.sla_ms:  # late for its class, not for the SLA
            return Decision("degraded", "primary", 1)
        return Decision("rejected", None, 0)

    def observe(self, model: str, steps: int, service_ms: float) -> None:
        """A batch of `model` whose slowest row took `steps` steps ran in `service_ms`."""
        self.service[model].observe(steps, service_ms)

    @property
    def cap(self) -> float:
        """The most steps a fresh top-priority request would get now (for /metrics)."""
        if self.mode == "static":
            return float(self.full)
        return float(self.service["primary"].most_steps_within(self.slack_ms(0.0, 0), self.full))
