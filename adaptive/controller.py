"""Which operating point each request gets under load: the degradation ladder and its rule.

The ladder, in order: (1) a lower budget on the primary model: fewer steps (forced early
exit) and, for MoE models, fewer experts per token, (2) the smaller fallback model, (3) reject
(the deadline cannot be met) or defer (the queue is full: retry later).

The rule is a deadline check against *measured* service times. When a batch is dispatched, each
request has waited `waited_ms`; what is left of its latency allowance (headroom x SLA, less for
lower priorities) must cover the batch's run. The controller keeps, per model and per expert
budget, a running estimate of how long a batch takes (updated from every batch it runs), and
gives each request what it asked for if that fits its slack -- or, when the artifact's table
says a cheaper point (fewer steps or experts) is as accurate within `tolerance`, that one: a
budget is a cap, and compute that buys no accuracy takes capacity from the requests behind. If
not, of the operating points that fit, the one with the best validation accuracy in the
artifact's table (scored in batches the size of the one about to run: with expert capacity, an
example's answer depends on the tokens it shares slots with), the cheapest of those within
`tolerance` of it (without a table: the most steps that fit, then the most experts): the best
prediction the time left can buy. When both models carry accuracy on the same split, the
fallback competes with those points on it (one expert or one step of a big model can be worse
than a small model's whole answer; the fallback runs at its own cap, and a budget in FLOPs is
not priced against it: it is assumed the cheaper model). If not even one step fits, the fallback
model if its run fits; otherwise the request is rejected at once, since a late answer counts as
wrong and its compute is better spent on requests that can still make it.

Each group of a batch is decided again when it is about to run (rows known, the wait of the
groups before it included). Why not AIMD on a step cap, tried first: a window of completed
latencies lags a spike by the time the queue takes to build, and the p99 went to 127 ms under
a 30 ms SLA (measured with `adaptive bench serve`). Why not the calibrated cost model alone:
this machine's speed drifts by tens of percent (experiments/budget_targeting); estimates
refreshed from every batch follow the speed the server actually has. The queueing delay each
request already carries is the early signal, and it reacts within one batch.

`mode="static"` is the baseline: every request gets its requested budget on the primary model,
nothing is shed or deferred.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from adaptive.accuracy_table import AccuracyTable

STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred")


@dataclass
class Decision:
    status: str  # ok | degraded | fallback | rejected | deferred
    model: str | None  # "primary", "fallback" or None
    steps: int
    experts: int | None = None  # experts per token on a MoE primary (None: as trained)


class ServiceTimes:
    """Running estimate of a batch's run time: ms = a + b * steps + c * rows * steps, fitted by
    least squares to the last `window` batches (steps: the most any row took), so that it
    follows both the machine's current speed and how full the batches are."""

    def __init__(self, cap: int, window: int = 200):
        self.cap = cap
        self._seen: deque[tuple[int, int, float]] = deque(maxlen=window)
        self._coef: np.ndarray | None = None

    def observe(self, steps: int, ms: float, rows: int = 1) -> None:
        self._seen.append((int(np.clip(steps, 1, self.cap)), max(int(rows), 1), float(ms)))
        seen = np.asarray(self._seen, float)
        features = np.stack([np.ones(len(seen)), seen[:, 0], seen[:, 0] * seen[:, 1]], 1)
        if len({(s, r) for s, r, _ in self._seen}) >= 3:
            self._coef = np.maximum(np.linalg.lstsq(features, seen[:, 2], rcond=None)[0], 0.0)
        else:  # too few distinct batches for a fit: all time per step and row, as a bound
            self._coef = np.array([0.0, 0.0, float(np.max(seen[:, 2] / (seen[:, 0] * seen[:, 1])))])

    def estimate(self, steps: int, rows: int = 1) -> float:
        """The expected run of a batch of `rows` whose slowest row takes `steps` (0 before any)."""
        if self._coef is None:
            return 0.0
        a, b, c = self._coef
        return float(a + b * steps + c * steps * rows)

    def most_steps_within(self, slack_ms: float, requested: int, rows: int = 1) -> int:
        """The most steps (<= requested) whose estimated run fits `slack_ms`; 0 if none."""
        for s in range(requested, 0, -1):
            if self.estimate(s, rows) <= slack_ms:
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
        expert_budgets: tuple[int, ...] = (),
        accuracy: AccuracyTable | dict | None = None,
        fallback_accuracy: float | None = None,
        tolerance: float = 0.005,
        headroom: float = 0.8,
        max_queue: int = 1024,
    ):
        """`expert_budgets`: a MoE primary's smaller experts-per-token it can run at;
        `accuracy`: the artifact's table, or one {(experts or None, steps): validation accuracy}
        for every batch size;
        `fallback_accuracy`: the fallback model's, on the same split; `tolerance`: how much
        validation accuracy a cheaper operating point may give up against the one asked for."""
        if mode not in ("adaptive", "static"):
            raise ValueError(f"controller mode {mode!r} is not 'adaptive' or 'static'")
        if not tolerance >= 0:
            raise ValueError(f"accuracy tolerance {tolerance!r} must be >= 0")
        self.full, self.sla_ms, self.mode, self.has_fallback = cap, sla_ms, mode, has_fallback
        self.headroom, self.max_queue = headroom, max_queue
        self.fallback_cap = max(fallback_cap, 1)
        # Expert budgets from the trained one (None) down: the order ties are broken in.
        self.expert_budgets = (None, *sorted(expert_budgets, reverse=True))
        self.accuracy = accuracy if isinstance(accuracy, AccuracyTable) else AccuracyTable({1: accuracy or {}})
        self.fallback_accuracy, self.tolerance = fallback_accuracy, tolerance
        self.service = {("primary", k): ServiceTimes(cap) for k in self.expert_budgets}
        self.service["fallback", None] = ServiceTimes(self.fallback_cap)

    def admit(self, queue_length: int) -> bool:
        """False: defer (the queue is full). Static mode queues everything."""
        return self.mode == "static" or queue_length < self.max_queue

    def slack_ms(self, waited_ms: float, priority: int) -> float:
        """What is left of a request's allowance: lower priorities get less, so they degrade first."""
        return self.headroom * self.sla_ms / (1 + 0.5 * max(priority, 0)) - waited_ms

    def decide(self, requested_steps: int, waited_ms: float, priority: int = 0, rows: int = 1) -> Decision:
        """The operating point of one request of a batch of `rows` about to run."""
        requested = int(np.clip(requested_steps, 1, self.full))
        if self.mode == "static":
            return Decision("ok", "primary", requested)
        slack = self.slack_ms(waited_ms, priority)
        fitting = self.fitting_points(slack, requested, rows)
        if (requested, None) in fitting:
            return Decision("ok", "primary", *self.cheapest_as_good(requested, rows))
        fallback = Decision("fallback", "fallback", self.fallback_cap)
        fallback_ms = self.service["fallback", None].estimate(self.fallback_cap, rows)
        fallback_fits = self.has_fallback and fallback_ms <= slack
        accuracy = self.accuracy.at(rows)
        if accuracy:  # every point under one that fits fits too: the best of them, cheapest among near-ties
            options = [
                (
                    accuracy[k, s],
                    self.service["primary", k].estimate(s, rows),
                    Decision("degraded", "primary", s, k),
                )
                for top, k in fitting
                for s in range(1, top + 1)
                if (k, s) in accuracy  # a point the table does not hold is not one the model has
            ]
            if fallback_fits and self.fallback_accuracy is not None:
                # Both models scored on the same split: the fallback competes on accuracy (a primary
                # at one expert or one step can be worse than a small model that finishes its work).
                options.append((self.fallback_accuracy, fallback_ms, fallback))
            if options:
                return self._cheapest_near(options, max(acc for acc, _, _ in options))
        elif fitting:  # no table: the ladder's order, most steps first, then most experts
            return Decision("degraded", "primary", *max(fitting, key=self._merit))
        if fallback_fits:
            return fallback
        cheapest = self.expert_budgets[-1]
        if waited_ms + self.service["primary", cheapest].estimate(1, rows) <= self.sla_ms:  # late for its class only
            return Decision("degraded", "primary", 1, cheapest)
        return Decision("rejected", None, 0)

    def cheapest_as_good(self, requested: int, rows: int) -> tuple[int, int | None]:
        """The operating point (steps <= requested, experts) of the least estimated run whose
        validation accuracy is within `tolerance` of what was asked for: a budget is a cap, and
        steps or experts that buy no accuracy only take capacity from the requests behind."""
        accuracy = self.accuracy.at(rows)
        asked = accuracy.get((None, requested))
        if asked is None:
            return requested, None
        options = [  # fewer steps, then more experts, first: the order ties in estimated time go by
            (accuracy[k, s], self.service["primary", k].estimate(s, rows), (s, k))
            for s in range(1, requested + 1)
            for k in self.expert_budgets
            if (k, s) in accuracy
        ]
        return self._cheapest_near(options, asked)

    def _cheapest_near(self, options: list[tuple[float, float, object]], reference: float):
        """Of (accuracy, estimated ms, choice) options, the choice of the least estimated run whose
        accuracy is within `tolerance` of `reference` (the first such on ties)."""
        return min((o for o in options if o[0] >= reference - self.tolerance), key=lambda o: o[1])[2]

    def fitting_points(self, slack_ms: float, requested: int, rows: int) -> list[tuple[int, int | None]]:
        """(steps, experts) per expert budget: the most steps whose estimated run fits, if any."""
        points = []
        for k in self.expert_budgets:
            steps = self.service["primary", k].most_steps_within(slack_ms, requested, rows)
            if steps:
                points.append((steps, k))
        return points

    def _merit(self, point: tuple[int, int | None]) -> tuple:
        """Without an accuracy table: more steps first, then more experts."""
        steps, k = point
        return (steps, len(self.expert_budgets) - self.expert_budgets.index(k))

    def observe(self, model: str, steps: int, service_ms: float, rows: int = 1, experts: int | None = None) -> None:
        """A batch of `rows` of `model` (at `experts` per token) whose slowest row took `steps`
        steps ran in `service_ms`."""
        self.service[model, experts].observe(steps, service_ms, rows)

    @property
    def cap(self) -> float:
        """The most steps a fresh top-priority request would get now (for /metrics)."""
        if self.mode == "static":
            return float(self.full)
        return float(self.service["primary", None].most_steps_within(self.slack_ms(0.0, 0), self.full))
