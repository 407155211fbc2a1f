"""Which operating point each request gets under load: the degradation ladder and its rule.

The ladder, in order: (1) a lower budget on the primary model: fewer steps (forced early
exit) and, for MoE models, fewer experts per token, (2) the smaller fallback model, (3) reject
(the deadline cannot be met) or defer (the queue is full: retry later).

The rule is a deadline check against *measured* service times. When a batch is dispatched, each
request has waited `waited_ms`; what is left of its latency allowance (headroom x SLA, less for
lower priorities) must cover the batch's run. The controller keeps, per model and per expert
budget, a running estimate of how long a batch takes under a step budget (updated from every
batch it runs: time per step and row, and the steps recent batches under that budget took -- a
halting model stops well before most budgets). The time a batch may take is also bounded by its
share of the queue's: the requests queued behind it must be on time too (`share_ms`, from the
server). Each request gets what it asked for if that fits -- or, when the artifact's table says
a cheaper point (fewer steps or experts) is as accurate within `tolerance`, that one: a budget
is a cap, and compute that buys no accuracy takes capacity from the requests behind. If not, of
the operating points that fit, the one with the best validation accuracy in the artifact's
table (scored in batches the size of the one about to run: with expert capacity, an example's
answer depends on the tokens it shares slots with), the cheapest of those within `tolerance` of
it (without a table: the most steps that fit, then the most experts): the best prediction the
time left can buy. When both models carry accuracy on the same split, the fallback competes
with those points on it (one expert or one step of a big model can be worse than a small
model's whole answer; the fallback runs at its own cap, and a budget in FLOPs is not priced
against it: it is assumed the cheaper model). If nothing fits the share but something fits the
request's own slack, the point of most expected correct answers per ms: the queue cannot wait
for a better one (a request costs the server more than its share of the batch's run: `request_ms`).
If not even that, one step at the fewest experts if it still meets the SLA itself and fits the
queue's share (late for its priority class only: tried against the best point that meets the
SLA, which ran the queue later still); otherwise the request is rejected at once, since a late
answer counts as wrong and its compute is better spent on requests that can still make it.

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

from collections import Counter, deque
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
    """Running estimate of a batch's run time under a step budget: ms = a + b * steps + c * rows
    * steps, fitted by least squares to the last `window` batches (steps: the most any row took),
    so that it follows both the machine's current speed and how full the batches are; and the
    steps a batch takes under a budget, from the last `depth_window` batches: a halting model
    stops well before most budgets (parity: ~2 steps of 8), and pricing every batch at its cap
    let no request keep its budget (parity under Gamma bursts: 0 of 6441 answered `ok`).

    Every batch is observed on the server's event loop, so an observation is O(1): the fit keeps
    the window's normal equations as running sums, and both the fit and the depth quantiles are
    computed only when a decision asks for them (measured: refitting at every batch was 23% of
    the event loop of a static server at 1500 requests/s)."""

    def __init__(self, cap: int, window: int = 200, depth_window: int = 50, depth_quantile: float = 0.9):
        self.cap, self.depth_quantile = cap, depth_quantile
        self._seen: deque[tuple[int, int, float]] = deque(maxlen=window)
        self._pairs: Counter[tuple[int, int]] = Counter()  # distinct (steps, rows) in the window
        self._gram, self._moment = np.zeros((3, 3)), np.zeros(3)  # X^T X and X^T y over the window
        self._until_resum = window  # sums are rebuilt from the window now and then: no drift
        self._depths: deque[tuple[int, int]] = deque(maxlen=depth_window)  # (least budget, most steps)
        self._expected: np.ndarray | None = None  # steps expected under budget 0..cap, when asked
        self._coef: np.ndarray | None = None  # the fit, when asked

    def observe(self, steps: int, ms: float, rows: int = 1, budget: int | None = None) -> None:
        """A batch of `rows` whose slowest row took `steps` ran in `ms`; `budget`: the least step
        budget among its rows (None: unknown, as if every row was stopped by its budget)."""
        steps, rows = int(np.clip(steps, 1, self.cap)), max(int(rows), 1)
        self._depths.append((steps if budget is None else int(budget), steps))
        if len(self._seen) == self._seen.maxlen:
            self._add(*self._seen[0], sign=-1.0)
        self._seen.append((steps, rows, float(ms)))
        self._add(steps, rows, float(ms), sign=1.0)
        self._until_resum -= 1
        if self._until_resum == 0:
            self._until_resum = self._seen.maxlen
            self._gram[:], self._moment[:] = 0.0, 0.0
            for seen in self._seen:
                self._add(*seen, sign=1.0, count=False)
        self._expected = self._coef = None

    def _add(self, steps: int, rows: int, ms: float, sign: float, count: bool = True) -> None:
        features = np.array([1.0, steps, steps * rows])
        self._gram += sign * np.outer(features, features)
        self._moment += sign * ms * features
        if count:
            self._pairs[steps, rows] += int(sign)
            if not self._pairs[steps, rows]:
                del self._pairs[steps, rows]

    def _fit(self) -> np.ndarray:
        if self._coef is None:
            if len(self._pairs) >= 3:  # the least-squares fit through the normal equations
                # rcond: X^T X squares X's condition, so directions X barely spans (all batches at
                # one step: steps and the constant collinear) are cut as lstsq on X would cut them.
                self._coef = np.maximum(np.linalg.lstsq(self._gram, self._moment, rcond=1e-9)[0], 0.0)
            else:  # too few distinct batches for a fit: all time per step and row, as a bound
                per = max(ms / (steps * rows) for steps, rows, ms in self._seen)
                self._coef = np.array([0.0, 0.0, per])
        return self._coef

    def expected_steps(self, budget: int) -> float:
        """The steps a batch under `budget` takes (see `_expected_steps`)."""
        if not self._depths:
            return float(np.clip(budget, 0, self.cap))
        if self._expected is None:
            self._expected = self._expected_steps()
        return float(self._expected[int(np.clip(budget, 0, self.cap))])

    def _expected_steps(self) -> np.ndarray:
        """Per budget 0..cap, a high quantile over recent batches of the steps each would have
        taken under it. A batch that stopped before its least budget halted on its own, at m
        steps: min(m, budget). One that did not may have been stopped by a budget, so it says only
        that it goes on past m: `budget`, unless that is at most m."""
        budgets = np.arange(self.cap + 1)
        least, most = np.asarray(self._depths).T[:, :, None]
        samples = np.where(most < least, np.minimum(most, budgets), budgets)
        return np.quantile(samples, self.depth_quantile, axis=0, method="higher").astype(float)

    def estimate(self, steps: int, rows: int = 1) -> float:
        """The expected run of a batch of `rows` under a budget of `steps` (0 before any batch)."""
        if not self._seen:
            return 0.0
        a, b, c = self._fit()
        taken = self.expected_steps(steps)
        return float(a + b * taken + c * taken * rows)

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

    def decide(
        self,
        requested_steps: int,
        waited_ms: float,
        priority: int = 0,
        rows: int = 1,
        share_ms: float = np.inf,
        request_ms: float = 0.0,
    ) -> Decision:
        """The operating point of one request of a batch of `rows` about to run; `share_ms`: the
        most this batch may take and leave the requests queued behind it their time (the server
        splits the oldest one's slack over the batches ahead of it). When no point fits the share,
        the queue cannot wait for a better one: of the points that fit the request's own slack,
        the one of most expected correct answers per ms of the server's time -- the batch's run
        plus `request_ms` a row, what the server spends on a request whatever runs it (HTTP, JSON;
        measured by the server) -- (without a table: the quickest)."""
        requested = int(np.clip(requested_steps, 1, self.full))
        if self.mode == "static":
            return Decision("ok", "primary", requested)
        slack = self.slack_ms(waited_ms, priority)
        allowance = min(slack, share_ms)
        fitting = self.fitting_points(allowance, requested, rows)
        if (requested, None) in fitting:
            return Decision("ok", "primary", *self.cheapest_as_good(requested, rows))
        options = self._options(allowance, requested, rows, fitting)
        if options:
            return self._best(options)
        options = self._options(slack, requested, rows) if allowance < slack else []
        if options:
            return self._most_per_ms(options, rows * request_ms)
        # Late for its class only: one step at the fewest experts still meets the SLA itself --
        # unless that run would take the time of the requests queued behind (measured: a 3x spike
        # spent on such late rescues left the queue to go late in turn, effective accuracy 0.57).
        rescue_ms = self.service["primary", self.expert_budgets[-1]].estimate(1, rows)
        if waited_ms + rescue_ms <= self.sla_ms and rescue_ms <= share_ms:
            return Decision("degraded", "primary", 1, self.expert_budgets[-1])
        return Decision("rejected", None, 0)

    def _options(
        self, allowance_ms: float, requested: int, rows: int, fitting: list | None = None
    ) -> list[tuple[float | None, float, Decision]]:
        """(validation accuracy or None, estimated ms, decision) of every point whose run fits:
        each step budget under the most that fit, per expert budget (with a table, only the
        points it holds: the others are not ones the model has), and the fallback. `fitting`:
        `fitting_points` for this allowance, when the caller has it already."""
        accuracy = self.accuracy.at(rows)
        options = [
            (accuracy.get((k, s)), self.service["primary", k].estimate(s, rows), Decision("degraded", "primary", s, k))
            for top, k in (fitting if fitting is not None else self.fitting_points(allowance_ms, requested, rows))
            for s in range(1, top + 1)
            if not accuracy or (k, s) in accuracy
        ]
        fallback_ms = self.service["fallback", None].estimate(self.fallback_cap, rows)
        if self.has_fallback and fallback_ms <= allowance_ms:
            # Scored on the same split as the primary's table, the fallback competes on accuracy (a
            # primary at one expert or one step can be worse than a small model that finishes its work).
            acc = self.fallback_accuracy if accuracy else None
            options.append((acc, fallback_ms, Decision("fallback", "fallback", self.fallback_cap)))
        return options

    def _best(self, options: list[tuple[float | None, float, Decision]]) -> Decision:
        """The most accurate option, the cheapest of those within `tolerance` of it; without
        accuracies, the ladder's order: most steps, then most experts, then the fallback."""
        scored = [o for o in options if o[0] is not None]
        if scored:
            return self._cheapest_near(scored, max(acc for acc, _, _ in scored))
        primary = [d for _, _, d in options if d.model == "primary"]
        if primary:
            return max(primary, key=lambda d: self._merit((d.steps, d.experts)))
        return options[-1][2]

    @staticmethod
    def _most_per_ms(options: list[tuple[float | None, float, Decision]], fixed_ms: float = 0.0) -> Decision:
        """The option of most expected correct answers per ms of run plus `fixed_ms` (without
        accuracies: the quickest)."""
        scored = [o for o in options if o[0] is not None]
        if scored:
            return max(scored, key=lambda o: o[0] / max(o[1] + fixed_ms, 1e-6))[2]
        return min(options, key=lambda o: o[1])[2]

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

    def observe(
        self,
        model: str,
        steps: int,
        service_ms: float,
        rows: int = 1,
        experts: int | None = None,
        budget: int | None = None,
    ) -> None:
        """A batch of `rows` of `model` (at `experts` per token, its rows' least step budget
        `budget`) whose slowest row took `steps` steps ran in `service_ms`."""
        self.service[model, experts].observe(steps, service_ms, rows, budget)

    @property
    def cap(self) -> float:
        """The most steps a fresh top-priority request would get now (for /metrics)."""
        if self.mode == "static":
            return float(self.full)
        return float(self.service["primary", None].most_steps_within(self.slack_ms(0.0, 0), self.full))
