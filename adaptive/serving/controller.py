"""Which operating point each request of a batch gets: the degradation ladder and its rule.

The ladder, in order: (1) a lower budget on the primary model: fewer steps (forced early exit)
and, for MoE models, fewer experts per token, (2) a fallback: a smaller model, or a cheaper
operating point of one (lower precision, pruned; adaptive.evaluation.operating_points), one of
several when the server has more (`Fallback`), (3) reject (the request cannot be on time, or the
server cannot keep up) or defer (the queue is full: retry).

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

The plans tried: for each operating point of the primary, as many rows as fit on it (in the
order below; the primary's runs timed as the server splits them by step budget), the rest on
one fallback as far as both limits allow (each fallback in turn: a batch uses one), the others
rejected. Of these the plan maximizes the
expected correct answers (validation accuracy summed over the rows it serves; a rejected row
scores nothing) and, of the plans where no row is worse off than in the best by more than
`tolerance`, takes the quickest: compute that buys no accuracy is taken from the requests
behind. Rows go to the primary in priority order (0 first, then the freshest: they have the
slack for the longer run), so lower priorities degrade first, and are rejected first when even
the fallback cannot serve every row in time. A request is `ok` when its operating point is as
accurate as the budget it asked for (within the tolerance), `degraded` otherwise. Without an
accuracy table the ladder's order decides: the primary before the fallbacks (in the order
given), then more steps, then more experts. A point that has not run for a horizon still gets
one row (`_probe`) where its estimate says nothing is on time there, or where the plan rejects
every live row: estimates are corrected only by runs.

Why this rule (the alternatives were compared with `adaptive bench serve`, experiments/serving):
AIMD on a step cap from windowed p95 latencies lags a spike by the time the queue takes to build.
Per-request deadline checks with a latency allowance that shrinks with the priority, an even
split of the oldest queued request's slack between the batches ahead, and special rules for late
requests degrade requests at a base rate full depth serves on time (a low priority gets a fixed
fraction of the allowance whatever the load), and a slack split says nothing of the requests
still to arrive. The arrival rate does: it is the load the next batches must carry, and a
deadline alone cannot see it.

`mode="static"` and `mode="shed"`, the baselines, are in adaptive/serving/baseline_policies.py.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adaptive.serving.accuracy_table import AccuracyTable
from adaptive.serving.baseline_policies import EPS_MS, BaselinePolicies
from adaptive.serving.decisions import MODES, REJECTED, Decision, Request
from adaptive.serving.fallbacks import Fallback, worth_planning
from adaptive.serving.plan_values import PlanValues
from adaptive.serving.service_times import ServiceTimes

STALE_S = 1.0  # how long a point's measured times are trusted to refuse a latency budget unrun


@dataclass
class _Plan:
    values: dict[int, float]  # row -> expected correctness (rows missing: rejected, 0)
    ms: float  # estimated run of the whole batch
    decisions: dict[int, Decision]  # row -> decision (rows missing: rejected)

    @property
    def value(self) -> float:  # expected correct answers
        return sum(self.values.values())


def one_run(budgets: np.ndarray) -> list[np.ndarray]:
    """All of a model's rows in one run (a server that does not split them by step budget)."""
    return [np.arange(len(budgets))]


class Controller(BaselinePolicies):
    def __init__(
        self,
        max_steps: int,
        sla_ms: float,
        *,
        mode: str = "adaptive",
        fallbacks: tuple[Fallback, ...] = (),
        expert_budgets: tuple[int, ...] = (),
        accuracy: AccuracyTable | dict | None = None,
        tolerance: float = 0.005,
        headroom: float = 0.8,
        utilization: float = 0.85,
        max_batch: int = 32,
        max_queue: int = 1024,
        groups: Callable[[np.ndarray], list[np.ndarray]] = one_run,
        least_steps: int = 1,
    ):
        """`max_steps`: the primary model's full step cap (its engine's `cap`): no budget runs past it;
        `least_steps`: the primary's least run (a static model's is all its steps): a request
        with a smaller budget is never put on it;
        `expert_budgets`: a MoE primary's smaller experts-per-token it can run at;
        `fallbacks`: the rungs below the primary, the first preferred where nothing else decides;
        `accuracy`: the artifact's table, or one {(experts or None, steps): validation accuracy}
        for every batch size;
        `tolerance`: how much validation accuracy a quicker plan may give up a request;
        `headroom`: the share of the SLA a plan may use (estimates are means, runs vary);
        `utilization`: the share of the server's time batches may take at the arrival rate;
        `max_batch`: the server's largest batch, the one throughput is priced at; `groups`:
        how the server splits the primary's rows into runs by their step budgets (the engine's
        `groups`): a plan prices and times those runs, one after the other."""
        if mode not in MODES:
            raise ValueError(f"controller mode {mode!r} is not one of {', '.join(MODES)}")
        if not tolerance >= 0:
            raise ValueError(f"accuracy tolerance {tolerance!r} must be >= 0")
        if not 0 < headroom <= 1 or not 0 < utilization <= 1:
            raise ValueError(f"headroom {headroom!r} and utilization {utilization!r} must be in (0, 1]")
        names = [f.name for f in fallbacks]
        if "primary" in names or len(set(names)) < len(names):
            raise ValueError(f"fallback names {names} must be unique and not 'primary'")
        self.max_steps, self.sla_ms, self.mode, self.least_steps = max_steps, sla_ms, mode, least_steps
        self.fallbacks = tuple(dataclasses.replace(f, cap=max(int(f.cap), 1)) for f in fallbacks)
        self.headroom, self.utilization, self.max_queue = headroom, utilization, max_queue
        self.max_batch, self.groups = max(int(max_batch), 1), groups
        # Expert budgets from the trained one (None) down: the order ties are broken in.
        self.expert_budgets = (None, *sorted(expert_budgets, reverse=True))
        self.accuracy = accuracy if isinstance(accuracy, AccuracyTable) else AccuracyTable({1: accuracy or {}})
        self.tolerance = tolerance
        self.values = PlanValues(self.accuracy, tolerance, self.fallbacks, self.expert_budgets, least_steps)
        self.service = {("primary", k): ServiceTimes(max_steps) for k in self.expert_budgets}
        self.service |= {(f.name, None): ServiceTimes(f.cap) for f in self.fallbacks}
        self._rank = {f.name: i for i, f in enumerate(self.fallbacks)}
        self.clock = time.monotonic  # seconds; when each point last ran decides a probe (`_probe`)
        self._ran_at = dict.fromkeys(self.service, self.clock())
        self._idle_ms: dict[str, tuple[float, float]] = {}  # model -> (when, ms) of its last idle run

    @property
    def horizon_ms(self) -> float:
        """How long after its arrival a request's answer may come, by plan."""
        return self.headroom * self.sla_ms

    def admit(self, queue_length: int) -> bool:
        """False: defer (the queue is full). The static modes queue everything (shedding is
        by deadline, `sheds`)."""
        return self.mode != "adaptive" or queue_length < self.max_queue

    def batch_time_ms(self, rows: int, arrival_rate: float, queued: int = 0) -> float:
        """The share of the server's time a batch of `rows` may use at `arrival_rate` requests/s
        with `queued` requests waiting behind it, a plan's rows priced at a full batch's run
        (`ServiceTimes.share_ms`): what keeps the queue from growing at that demand."""
        demand = max(arrival_rate, 0.0) + queued / (self.horizon_ms / 1e3)
        return np.inf if demand <= 0 else 1e3 * self.utilization * rows / demand

    def plan(self, requests: list[Request], time_ms: float = np.inf) -> list[Decision]:
        """One decision per request of a batch about to run, in order; `time_ms`: the batch's
        share of the server's time (`batch_time_ms`)."""
        if self.mode == "static":  # each at the most experts its budget allows
            return [self._static(r) for r in requests]
        if self.mode == "shed":
            return self._shed(requests)
        if not requests:
            return []
        order = sorted(range(len(requests)), key=lambda i: (requests[i].priority, requests[i].waited_ms))
        slack = [self.horizon_ms - r.waited_ms for r in requests]
        points = [None, *self._points(requests)]
        plans = [_Plan({}, 0.0, {})]  # every row rejected: the plan when nothing else is on time
        plans += [
            p
            for rung in self._rungs(requests) or (None,)
            for point in points
            if (p := self._plan_at(point, rung, requests, order, slack, time_ms))
        ]
        best = max(plans, key=lambda p: (p.value, -p.ms))
        # Each row may give up at most the tolerance against the best plan (a tolerance summed
        # over the batch would let one request give up all of it), and no row the best plan
        # serves is rejected for speed, however low its expected correctness.
        margin = self.tolerance if self.accuracy else 0.0

        def close(p: _Plan) -> bool:
            return all(i in p.values and p.values[i] >= v - margin - 1e-14 for i, v in best.values.items())

        chosen = min((p for p in plans if close(p)), key=lambda p: p.ms)
        return self._probe(requests, [chosen.decisions.get(i, REJECTED) for i in range(len(requests))])

    def _probe(self, requests: list[Request], decisions: list[Decision]) -> list[Decision]:
        """`decisions`, with one row moved to a point that has not run for a horizon: where its
        estimate alone says no row is on time there (any live row may move, a rejected one
        first), or where this plan rejects every live row (one of them moves): the primary at
        each expert budget (at its least run), then each fallback. The estimates are
        predictions, not measurements: after a slow run (a pause of the machine) one may say a
        point is never on time, or is over the share of the server's time the arrival rate
        leaves a batch, or leaves no time to a row that has waited at all; plans then avoid it,
        and without a run it would never be corrected. Under load that serves some rows the
        points that run are measured, and no row is moved (it would delay those). A live row is
        one not past its deadline that can run there; one point a plan (shedding keeps a rule of
        the same kind, `_shed`)."""
        now, horizon = self.clock(), self.horizon_ms
        live = [i for i, r in enumerate(requests) if r.waited_ms < horizon + EPS_MS]
        if not live:
            return decisions
        live.sort(key=lambda i: (decisions[i].model is not None, requests[i].waited_ms, requests[i].priority))
        all_rejected = all(decisions[i].model is None for i in live)
        points = [("primary", k) for k in self.expert_budgets] + [(f.name, None) for f in self.fallbacks]
        for model, k in points:
            least = self.least_steps if model == "primary" else self.fallbacks[self._rank[model]].cap
            if now - self._ran_at[model, k] <= horizon / 1e3:
                continue
            if any(d.model == model and d.experts == k for d in decisions):
                continue  # it runs in this plan: its run is measured
            if not (self.service[model, k].estimate(least, 1) > horizon or all_rejected):
                continue
            for i in live:
                if model == "primary" and self._fits(requests[i], k):
                    decisions[i] = self._primary_decision((k, least), requests[i], 1)
                    return decisions
                rung = None if model == "primary" else self.fallbacks[self._rank[model]]
                if rung is not None and self._fallback_steps(rung, requests[i]) >= 1:
                    decisions[i] = Decision("fallback", model, self._fallback_steps(rung, requests[i]))
                    return decisions
        return decisions

    def _rungs(self, requests: list[Request]) -> list[Fallback]:
        """The fallbacks worth a plan for this batch (`worth_planning`): each rung tried costs
        a plan per primary point, event-loop time against the SLA. Times are compared at one
        row and at a full batch (an estimate is linear in rows between them)."""
        return worth_planning(
            self.fallbacks,
            lambda rung: tuple(self.service[rung.name, None].estimate(rung.cap, n) for n in (1, self.max_batch)),
            lambda rung: [self._fallback_steps(rung, r) for r in requests],
        )

    def _fits(self, request: Request, experts: int | None = None) -> bool:
        """Whether the primary's least run at `experts` per token keeps the request's budget (a
        static model's is all its steps; a budget under one step, steps 0, only a fallback may keep)."""
        steps = self._asked(request, experts)
        return steps >= 1 and self._clip(steps) >= self.least_steps

    def _asked(self, request: Request, experts: int | None) -> int:
        """The request's step budget at `experts` per token on the primary."""
        if experts is None or request.expert_steps is None:
            return request.steps
        return request.expert_steps[self.expert_budgets.index(experts) - 1]

    def _clip(self, steps: int) -> int:
        return min(max(int(steps), 1), self.max_steps)

    def _fallback_steps(self, rung: Fallback, request: Request) -> int:
        """The step budget of the fallback `rung` for `request`: its cap, within the request's budget."""
        steps = request.fallback_steps
        if isinstance(steps, tuple):
            steps = steps[self._rank[rung.name]]
        return rung.cap if steps is None else min(max(int(steps), 0), rung.cap)

    def _points(self, requests: list[Request]) -> list[tuple[int | None, int]]:
        """(experts, steps) the primary can run this batch at: fewer steps and more experts first
        (the order ties in estimated time go by); with a table, only the points it holds and the
        step budgets below those it scores (`AccuracyTable.least_scored`). Of step
        budgets alike in expected steps and accuracy (a halting model that stops at 2 runs 3 to 8
        as one), only the largest: the same plan, more room for a hard input, and a plan's cost
        (event-loop time) grows with every point it tries."""
        table = self.accuracy.at(len(requests))
        points = []
        for k in self.expert_budgets:
            most = max(self._clip(self._asked(r, k)) for r in requests)  # more than any row asked: the same run
            times, last = self.service["primary", k], None
            scored_from = self.accuracy.least_scored(len(requests), k) or self.least_steps
            for s in range(most, 0, -1):
                if table and (k, s) not in table and not self.least_steps <= s < scored_from:
                    continue
                alike = (times.expected_steps(s), table.get((k, s)))
                if alike != last:
                    points.append((k, s))
                last = alike
        rank = {k: i for i, k in enumerate(self.expert_budgets)}
        return sorted(points, key=lambda p: (p[1], rank[p[0]]))

    def _plan_at(self, point, rung, requests, order, slack, time_ms) -> _Plan | None:
        """The plan that runs as many rows as fit on the primary at `point` (None: none) and
        serves the rest on the fallback `rung` (None: none), in priority order, as far as
        deadlines and the pace (`time_ms`) allow; None if not one row fits the primary at that
        point, or (without a primary row) the fallback serves none."""
        rows, primary, primary_ms, primary_pace = len(requests), [], 0.0, 0.0
        fallback = self.service[rung.name, None] if rung else None
        if point is not None:
            k, steps = point
            if steps < self.least_steps:
                return None  # a static model has no such point: it runs all its steps
            fits = [i for i in order if self._fits(requests[i], k)]
            times, ranked = self.service["primary", k], sorted(slack[i] for i in fits)
            for m in range(len(fits), 0, -1):
                # The fallback's rows run first: the primary's must have slack for them as well.
                before = fallback.estimate(rung.cap, rows - m) if rung and m < rows else 0.0
                # A first cut, as one run at the point's steps; then the runs the server makes.
                need = times.estimate(steps, m) + before - EPS_MS
                if (
                    times.share_ms(steps, m, self.max_batch) > time_ms + EPS_MS
                    or len(fits) - bisect.bisect_left(ranked, need) < m
                ):
                    continue
                chosen = [i for i in fits if slack[i] >= need][:m]
                budgets = [min(steps, self._clip(self._asked(requests[i], k))) for i in chosen]
                finish, primary_ms, primary_pace = self._runs(times, budgets, before)
                on_time = all(slack[i] >= t - EPS_MS for i, t in zip(chosen, finish, strict=True))
                if on_time and primary_pace <= time_ms + EPS_MS:
                    primary = chosen
                    break
            else:
                return None
        decisions = {i: self._primary_decision(point, requests[i], len(primary)) for i in primary}
        served, tightest = [], np.inf
        for i in (i for i in order if i not in decisions) if rung else ():
            if self._fallback_steps(rung, requests[i]) < 1:
                continue  # the fallback's least run is over this request's budget
            # Priced at the fallback's cap: rows with tighter budgets only make the run quicker.
            ms = fallback.estimate(rung.cap, len(served) + 1)
            pace = primary_pace + fallback.share_ms(rung.cap, len(served) + 1, self.max_batch)
            if pace <= time_ms + EPS_MS and ms <= min(tightest, slack[i]) + EPS_MS:
                served.append(i)
                tightest = min(tightest, slack[i])
        if point is None and not served:
            return None  # rejects every row: `plan` has that plan already
        decisions |= {i: Decision("fallback", rung.name, self._fallback_steps(rung, requests[i])) for i in served}
        ms = primary_ms + (fallback.estimate(rung.cap, len(served)) if served else 0.0)
        # Scored at the rows each run has: with expert capacity, a run's tokens share the slots.
        run_rows = {"primary": len(primary), rung.name if rung else "": len(served)}
        values = {i: self.values.value(d, run_rows[d.model]) for i, d in decisions.items()}
        return _Plan(values, ms, decisions)

    def _runs(self, times: ServiceTimes, budgets: list[int], start_ms: float) -> tuple[list[float], float, float]:
        """The primary's rows with these step budgets as the server runs them (`groups`)."""
        return times.runs(budgets, self.groups(np.asarray(budgets, np.int32)), start_ms, self.max_batch)

    def _primary_decision(self, point, request: Request, rows: int) -> Decision:
        """ok: the request's own point (the most experts its budget allows, at its step budget) or
        one within the tolerance of it; else degraded."""
        k, steps = point
        steps = min(steps, self._clip(self._asked(request, k)))
        own = next(j for j in self.expert_budgets if self._fits(request, j))  # `fits` holds it for k
        ok = self.values.as_good((k, steps), (own, self._clip(self._asked(request, own))), rows)
        return Decision("ok" if ok else "degraded", "primary", steps, k)

    def observe(
        self,
        model: str,
        steps: int,
        service_ms: float,
        rows: int = 1,
        experts: int | None = None,
        budget: int | None = None,
        run_ms: float | None = None,
    ) -> None:
        """A batch of `rows` of `model` (at `experts` per token, its rows' least step budget
        `budget`) whose slowest row took `steps` steps ran in `service_ms` (`run_ms` of it to its
        last row's answer: what a latency budget bounds)."""
        self.service[model, experts].observe(steps, service_ms, rows, budget, run_ms)
        self._ran_at[model, experts] = self.clock()

    def steps_within_ms(self, model: str, experts: int | None, ms: float, requested: int, rows: int) -> int:
        """The most steps (<= requested) a run of `rows` rows of `model` at `experts` ends within
        `ms` on this server now (`ServiceTimes.tail_steps_within`); `requested` where the point
        has not run for `STALE_S` or a horizon, the longer: a request priced out runs nothing, so
        estimates made in a slow moment would otherwise refuse every such request for good; the
        batch that finds them stale runs as the cost model prices it, and corrects them. Unless
        an idle run just took longer than `ms` for one step (`observe_idle`): then 0."""
        now, stale = self.clock(), max(STALE_S, self.horizon_ms / 1e3)
        if now - self._ran_at[model, experts] > stale:
            idle = self._idle_ms.get(model) if experts is None else None
            return 0 if idle is not None and now - idle[0] <= stale and idle[1] > ms else requested
        return self.service[model, experts].tail_steps_within(ms, requested, rows)

    def observe_idle(self, model: str, run_ms: float) -> None:
        """A keep-warm run of `model`: one row, one step, at its trained experts, `run_ms` long.
        Not a service time (an idle server would fill their window with it), but while the
        served runs are stale it still refuses a latency budget under one step now: without it
        a server at under one request per `STALE_S` would admit each and miss it."""
        self._idle_ms[model] = (self.clock(), run_ms)

    @property
    def current_step_cap(self) -> float:
        """The most steps a lone fresh request would get now (the `adaptive_step_cap` gauge of
        /metrics), at most `max_steps`."""
        if self.mode != "adaptive":
            return float(self.max_steps)
        return float(self.service["primary", None].most_steps_within(self.horizon_ms, self.max_steps))
