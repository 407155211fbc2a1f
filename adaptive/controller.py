"""Which operating point each request gets under load: the degradation ladder and its rule.

The ladder, in order: (1) a lower step budget (forced early exit), (2) the smaller fallback
model, (3) reject (the deadline cannot be met) or defer (the queue is full: retry later).

The rule is feedback, AIMD on a step cap, not a prediction from the calibrated cost model: on
this project's machines the same executable drifts by tens of percent in speed (measured:
experiments/budget_targeting), and a feedback loop tracks the speed the server actually has.
Every `window_s` the controller looks at the p95 latency of the requests answered in the last
window: above `target` x SLA it halves the cap (multiplicative decrease), below `relax` x SLA it
adds a step (additive increase). Priorities degrade in order: priority p gets the cap divided
by (1 + p), so low-priority requests lose depth first, and when the cap is at its floor and
latency is still over target, priorities >= 1 move to the fallback model. Independently, a
request that has already waited so long that even its fastest answer would be late is rejected
at once (deadline-aware shedding): a late answer counts as wrong, and its compute is better
spent on requests that can still make it.

`mode="static"` is the baseline: every request gets its requested budget on the primary model,
nothing is shed or deferred.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred")


@dataclass
class Decision:
    status: str  # ok | degraded | fallback | rejected | deferred
    model: str | None  # "primary", "fallback" or None
    steps: int


class Controller:
    def __init__(
        self,
        cap: int,
        sla_ms: float,
        *,
        mode: str = "adaptive",
        has_fallback: bool = False,
        window_s: float = 0.1,
        target: float = 0.7,
        relax: float = 0.4,
        max_queue: int = 1024,
    ):
        if mode not in ("adaptive", "static"):
            raise ValueError(f"controller mode {mode!r} is not 'adaptive' or 'static'")
        self.full, self.sla_ms, self.mode, self.has_fallback = cap, sla_ms, mode, has_fallback
        self.window_s, self.target, self.relax, self.max_queue = window_s, target, relax, max_queue
        self.cap = float(cap)
        self.fallback_on = False
        self._latencies: deque[float] = deque()
        self._service_ms = 0.0  # EWMA of one batch's service time: the fastest answer we can give
        self._last_tick = None
        self.history: list[tuple[float, float, bool]] = []  # (time, cap, fallback on): for plots

    def admit(self, queue_length: int) -> bool:
        """False: defer (the queue is full). Static mode queues everything."""
        return self.mode == "static" or queue_length < self.max_queue

    def decide(self, requested_steps: int, waited_ms: float, priority: int = 0) -> Decision:
        requested = int(np.clip(requested_steps, 1, self.full))
        if self.mode == "static":
            return Decision("ok", "primary", requested)
        if waited_ms + self._service_ms > self.sla_ms:
            return Decision("rejected", None, 0)
        if self.fallback_on and self.has_fallback and priority >= 1:
            return Decision("fallback", "fallback", requested)
        steps = max(1, min(requested, int(self.cap // (1 + max(priority, 0)))))
        return Decision("ok" if steps == requested else "degraded", "primary", steps)

    def observe(self, now: float, latencies_ms: list[float], service_ms: float) -> None:
        """Requests answered (latency from arrival) and the batch's service time; adjusts the cap
        once per window."""
        self._latencies.extend(latencies_ms)
        self._service_ms = service_ms if self._service_ms == 0 else 0.8 * self._service_ms + 0.2 * service_ms
        self.tick(now)

    def tick(self, now: float) -> None:
        if self.mode == "static":
            return
        if self._last_tick is None:
            self._last_tick = now
        if now - self._last_tick < self.window_s or not self._latencies:
            return
        p95 = float(np.percentile(np.asarray(self._latencies), 95))
        self._latencies.clear()
        self._last_tick = now
        if p95 > self.target * self.sla_ms:
            self.fallback_on = self.cap <= 1.0 and self.has_fallback
            self.cap = max(1.0, self.cap / 2)
        elif p95 < self.relax * self.sla_ms:
            self.cap = min(float(self.full), self.cap + 1)
            if self.cap > 1.0:
                self.fallback_on = False
        self.history.append((now, self.cap, self.fallback_on))
