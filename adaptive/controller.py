"""Which operating point each request of a batch gets: the degradation ladder and its rule.

The ladder, in order: (1) a lower budget on the primary model: fewer steps (forced early exit)
and, for MoE models, fewer experts per token, (2) the smaller fallback model, (3) reject (the
request cannot be on time, or the server cannot keep up) or defer (the queue is full: retry).

The rule is predictive: one plan per batch, from *measured* service times (`ServiceTimes`: what
a batch of so many rows takes under a step budget on this server now) and the artifacts'
validation accuracy at every operating point (`AccuracyTable`, scored in batches the size of
the one about to run), under two limits:

- deadlines: each answer must come within `headroom` x SLA of the request's arrival (the
  batch's runs are sequential, the fallback's rows first: they are the quick ones);
- the server's pace: the batch's rows may cost at most their share of the server's time at the
  current arrival rate, `utilization` x rows / (rate + queued / horizon) (`batch_time_ms`), each
  row priced at its share of a full batch's run (under load batches fill up): at that pace the
  queue does not grow, and a backlog is cleared within one horizon (headroom x SLA).

Within both, the plan maximizes the expected correct answers (validation accuracy summed over
the rows it serves; a rejected row scores nothing) and, of the plans within `tolerance` x rows
of the best, takes the quickest: compute that buys no accuracy is taken from the requests
behind. Rows go to the primary in priority order (0 first, then the freshest: they have the
slack for the longer run), so lower priorities degrade first, and are rejected first when even
the fallback cannot serve every row in time. A request is `ok` when its operating point is as
accurate as the budget it asked for (within the tolerance), `degraded` otherwise. Without an
accuracy table the ladder's order decides: the primary before the fallback, then more steps,
then more experts.

Why this rule, measured with `adaptive bench serve` (experiments/serving): AIMD on a step cap
from windowed p95 latencies lagged a spike by the time the queue takes to build (p99 127 ms
under a 30 ms SLA). Per-request deadline checks with a latency allowance that shrank with the
priority, an even split of the oldest queued request's slack between the batches ahead, and
special rules for late requests held MNIST-1D's spike, but degraded a third of the requests at
a base rate full depth served on time (priority 2 had half the allowance whatever the load), and
a slack split says nothing of the requests still to arrive. The arrival rate does: it is the
load the next batches must carry, and a deadline alone cannot see it.

`mode="static"` is the baseline: every request gets its requested budget on the primary model,
nothing is shed or deferred.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from adaptive.accuracy_table import AccuracyTable
from adaptive.service_times import ServiceTimes

STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred")


@dataclass(frozen=True)
class Decision:
    status: str  # ok | degraded | fallback | rejected | deferred
    model: str | None  # "primary", "fallback" or None
    steps: int
    experts: int | None = None  # experts per token on a MoE primary (None: as trained)


@dataclass(frozen=True)
class Request:
    """What the controller knows of one request of a batch about to run."""

    steps: int  # the step budget it asked for
    waited_ms: float  # since it arrived
    priority: int = 0  # 0 first; under load, higher numbers degrade first


REJECTED = Decision("rejected", None, 0)
EPS_MS = 1e-9  # estimates that meet a limit exactly fit it (float sums land either side)


@dataclass
class _Plan:
    value: float  # expected correct answers
    ms: float  # estimated run of the whole batch
    decisions: dict[int, Decision]  # row -> decision (rows missing: rejected)


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
        utilization: float = 0.85,
        max_batch: int = 32,
        max_queue: int = 1024,
    ):
        """`expert_budgets`: a MoE primary's smaller experts-per-token it can run at;
        `accuracy`: the artifact's table, or one {(experts or None, steps): validation accuracy}
        for every batch size; `fallback_accuracy`: the fallback model's, on the same split;
        `tolerance`: how much validation accuracy a quicker plan may give up a request;
        `headroom`: the share of the SLA a plan may use (estimates are means, runs vary);
        `utilization`: the share of the server's time batches may take at the arrival rate;
        `max_batch`: the server's largest batch, the one throughput is priced at."""
        if mode not in ("adaptive", "static"):
            raise ValueError(f"controller mode {mode!r} is not 'adaptive' or 'static'")
        if not tolerance >= 0:
            raise ValueError(f"accuracy tolerance {tolerance!r} must be >= 0")
        if not 0 < headroom <= 1 or not 0 < utilization <= 1:
            raise ValueError(f"headroom {headroom!r} and utilization {utilization!r} must be in (0, 1]")
        self.full, self.sla_ms, self.mode, self.has_fallback = cap, sla_ms, mode, has_fallback
        self.headroom, self.utilization, self.max_queue = headroom, utilization, max_queue
        self.max_batch = max(int(max_batch), 1)
        self.fallback_cap = max(fallback_cap, 1)
        # Expert budgets from the trained one (None) down: the order ties are broken in.
        self.expert_budgets = (None, *sorted(expert_budgets, reverse=True))
        self.accuracy = accuracy if isinstance(accuracy, AccuracyTable) else AccuracyTable({1: accuracy or {}})
        self.fallback_accuracy, self.tolerance = fallback_accuracy, tolerance
        self.service = {("primary", k): ServiceTimes(cap) for k in self.expert_budgets}
        self.service["fallback", None] = ServiceTimes(self.fallback_cap)

    @property
    def horizon_ms(self) -> float:
        """How long after its arrival a request's answer may come, by plan."""
        return self.headroom * self.sla_ms

    def admit(self, queue_length: int) -> bool:
        """False: defer (the queue is full). Static mode queues everything."""
        return self.mode == "static" or queue_length < self.max_queue

    def batch_time_ms(self, rows: int, arrival_rate: float, queued: int = 0) -> float:
        """The most a batch of `rows` may take at `arrival_rate` requests/s with `queued`
        requests waiting behind it: its rows' share of the server's time at that demand."""
        demand = max(arrival_rate, 0.0) + queued / (self.horizon_ms / 1e3)
        return np.inf if demand <= 0 else 1e3 * self.utilization * rows / demand

    def plan(self, requests: list[Request], time_ms: float = np.inf) -> list[Decision]:
        """One decision per request of a batch about to run, in order; `time_ms`: the most the
        batch may take (`batch_time_ms`)."""
        if self.mode == "static":
            return [Decision("ok", "primary", self._clip(r.steps)) for r in requests]
        if not requests:
            return []
        order = sorted(range(len(requests)), key=lambda i: (requests[i].priority, requests[i].waited_ms))
        slack = [self.horizon_ms - r.waited_ms for r in requests]
        plans = [self._plan_at(None, requests, order, slack, time_ms)]
        plans += [p for point in self._points(requests) if (p := self._plan_at(point, requests, order, slack, time_ms))]
        best = max(p.value for p in plans)
        margin = self.tolerance * len(requests) if self.accuracy else 0.0
        chosen = min((p for p in plans if p.value >= best - margin - 1e-12), key=lambda p: p.ms)
        return [chosen.decisions.get(i, REJECTED) for i in range(len(requests))]

    def _clip(self, steps: int) -> int:
        return int(np.clip(steps, 1, self.full))

    def _points(self, requests: list[Request]) -> list[tuple[int | None, int]]:
        """(experts, steps) the primary can run this batch at: fewer steps and more experts first
        (the order ties in estimated time go by); with a table, only the points it holds."""
        most = max(self._clip(r.steps) for r in requests)  # more steps than any row asked for: the same run
        table = self.accuracy.at(len(requests))
        return [(k, s) for s in range(1, most + 1) for k in self.expert_budgets if not table or (k, s) in table]

    def _plan_at(self, point, requests, order, slack, time_ms) -> _Plan | None:
        """The plan that runs as many rows as fit on the primary at `point` (None: none) and
        serves the rest on the fallback, in priority order, as far as deadlines and the pace
        (`time_ms`) allow; None if not one row fits the primary at that point."""
        rows, primary, primary_ms, primary_pace = len(requests), [], 0.0, 0.0
        fallback = self.service["fallback", None]
        if point is not None:
            k, steps = point
            times, ranked = self.service["primary", k], sorted(slack)
            for m in range(rows, 0, -1):
                primary_ms, primary_pace = times.estimate(steps, m), self._pace_ms(times, steps, m)
                # The fallback's rows run first: the primary's must have slack for them as well.
                before = fallback.estimate(self.fallback_cap, rows - m) if self.has_fallback and m < rows else 0.0
                need = primary_ms + before - EPS_MS
                if primary_pace <= time_ms + EPS_MS and rows - bisect.bisect_left(ranked, need) >= m:
                    primary = [i for i in order if slack[i] >= need][:m]
                    break
            else:
                return None
        decisions = {i: self._primary_decision(point, requests[i], len(primary)) for i in primary}
        served, tightest = [], np.inf
        for i in (i for i in order if i not in decisions) if self.has_fallback else ():
            ms = fallback.estimate(self.fallback_cap, len(served) + 1)
            pace = primary_pace + self._pace_ms(fallback, self.fallback_cap, len(served) + 1)
            if pace <= time_ms + EPS_MS and ms <= min(tightest, slack[i]) + EPS_MS:
                served.append(i)
                tightest = min(tightest, slack[i])
        decisions |= {i: Decision("fallback", "fallback", self.fallback_cap) for i in served}
        ms = primary_ms + (fallback.estimate(self.fallback_cap, len(served)) if served else 0.0)
        # Scored at the rows each run has: with expert capacity, a run's tokens share the slots.
        value = sum(self._value(d, len(primary) if d.model == "primary" else len(served)) for d in decisions.values())
        return _Plan(value, ms, decisions)

    def _pace_ms(self, times: ServiceTimes, steps: int, rows: int) -> float:
        """What `rows` rows cost the server's throughput: their share of a full batch's run. Under
        load batches fill up; pricing rows at the batch that happens to be running would put
        the few rows that came while a quick run ran on the fallback, and keep batches small."""
        return rows * times.estimate(steps, self.max_batch) / self.max_batch

    def _primary_decision(self, point, request: Request, rows: int) -> Decision:
        k, steps = point
        steps = min(steps, self._clip(request.steps))
        table, asked = self.accuracy.at(rows), self._clip(request.steps)
        if table and (None, asked) in table and (k, steps) in table:
            ok = table[k, steps] >= table[None, asked] - self.tolerance
        else:
            ok = k is None and steps == asked
        return Decision("ok" if ok else "degraded", "primary", steps, k)

    def _value(self, decision: Decision, rows: int) -> float:
        """Expected correctness of one row under `decision` (validation accuracy; without a
        table, a rank in the ladder's order: any primary point, more steps, more experts, and
        then the fallback, all above a rejection)."""
        table = self.accuracy.at(rows)
        if decision.model == "fallback":
            return self.fallback_accuracy if table and self.fallback_accuracy is not None else 1e-3
        if table:
            return table.get((decision.experts, decision.steps), 0.0)
        rank = len(self.expert_budgets) - self.expert_budgets.index(decision.experts)
        return 1.0 + 1e-3 * (decision.steps * (len(self.expert_budgets) + 1) + rank)

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
        """The most steps a lone fresh request would get now (for /metrics)."""
        if self.mode == "static":
            return float(self.full)
        return float(self.service["primary", None].most_steps_within(self.horizon_ms, self.full))
