"""What the serving controller's decisions are worth (adaptive.serving.controller): a served
row's expected correctness, which a plan sums over its rows, and whether an operating point is
as good as the one a request asked for (its status `ok` against `degraded`)."""

from __future__ import annotations

from adaptive.serving.accuracy_table import AccuracyTable, Point
from adaptive.serving.decisions import Decision
from adaptive.serving.fallbacks import Fallback, fallback_score


class PlanValues:
    def __init__(
        self,
        accuracy: AccuracyTable,
        tolerance: float,
        fallbacks: tuple[Fallback, ...],
        expert_budgets: tuple[int | None, ...],
        least_steps: int,
    ):
        """`accuracy`: the primary's validation accuracy at each point, per batch size;
        `tolerance`: the accuracy a point may lose against another and still count as it;
        `fallbacks`: the ladder's rungs, in order; `expert_budgets`: the primary's, the trained
        one (None) first; `least_steps`: the primary's least run."""
        self.accuracy, self.tolerance, self.fallbacks = accuracy, tolerance, fallbacks
        self.expert_budgets, self.least_steps = expert_budgets, least_steps
        self._rank = {f.name: i for i, f in enumerate(fallbacks)}

    def as_good(self, point: Point, asked: Point, rows: int) -> bool:
        """Whether the primary at `point` is as accurate as at `asked` (within the tolerance) in
        a run of `rows`; without both in the table, only the point itself is."""
        table = self.accuracy.at(rows)
        if table and asked in table and point in table:
            return table[point] >= table[asked] - self.tolerance
        return point == asked

    def value(self, decision: Decision, rows: int) -> float:
        """Expected correctness of one row under `decision` in a run of `rows`: validation
        accuracy; a primary step budget below those the table scores
        (`AccuracyTable.least_scored`) just under its least accurate point, each step fewer a
        tolerance lower (so a quicker one is taken only when the more steps do not fit); a
        fallback without a comparable score below every primary point, by more than the
        tolerance; each later fallback a tolerance lower, so the quickest-within-tolerance rule
        keeps their order; never 0, which a rejected row scores, but at least a millionth, less
        for each later one. Without a table, the ladder's order: a served row is worth 1, a
        primary row a millionth more than a fallback one, each step and expert a further 1e-12,
        each earlier fallback 1e-9 more than the next (a batch's worth of any stays below the
        rung above it)."""
        table = self.accuracy.at(rows)
        least, gap, rungs = min(table.values(), default=0.0), self.tolerance + 1e-6, len(self.fallbacks)
        if decision.model != "primary":
            rung = self._rank[decision.model]
            known = fallback_score(self.fallbacks[rung], decision.steps)
            if table:
                unscored = max(self.unscored_steps(rows, k) for k in self.expert_budgets)
                below = least - gap * (1 + rung + unscored)
                return known if known is not None else max(below, 1e-6 * (rungs - rung))
            return 1.0 - 1e-6 - 1e-9 * rung
        if table:
            point, scored_from = (decision.experts, decision.steps), self.accuracy.least_scored(rows, decision.experts)
            if point in table or scored_from is None or decision.steps >= scored_from:
                return table.get(point, 0.0)
            return max(least - gap * (scored_from - decision.steps), 1e-6 * (rungs + 1) + 1e-9 * decision.steps)
        rank = len(self.expert_budgets) - self.expert_budgets.index(decision.experts)
        return 1.0 + 1e-12 * (decision.steps * (len(self.expert_budgets) + 1) + rank)

    def unscored_steps(self, rows: int, experts: int | None) -> int:
        """How many step budgets of the primary at `experts` lie below those its table scores."""
        return max((self.accuracy.least_scored(rows, experts) or self.least_steps) - self.least_steps, 0)
