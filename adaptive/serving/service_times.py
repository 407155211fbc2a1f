"""How long a batch takes on this server now, per model and expert budget: the controller's clock.

Measured, not assumed: a machine's speed drifts (experiments/budget_targeting), and a halting
model stops well before most budgets, so both the time per step and row and the steps a batch
under a budget takes come from the batches the server actually ran.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

TAIL_S = 10.0  # a latency budget is priced at the runs of the last this many seconds,
TAIL_RUNS = 40  # and at least this many of the last runs: a high quantile of fewer is their slowest
TAIL_REFRESH_S = 0.05  # how long a computed tail is reused between observations
# The server's speed changed (a burst's contention ended or began) when this many runs in a row
# all came off their reference in one direction by more than this factor (`_shifted`).
SHIFT_RUNS = 8
SHIFT_FACTOR = 1.5
SHIFT_STRAYS = 2  # of the last SHIFT_RUNS + this many runs, so that one pause does not reset it
SAME_PAIR_RUNS = 3  # a run is judged against the window's runs of its own (steps, rows) from this many


class ServiceTimes:
    """Running estimate of a batch's run time under a step budget: ms = a + b * steps + c * rows
    * steps, fitted by least squares to the last `window` batches (steps: the most any row took),
    so that it follows both the machine's current speed and how full the batches are; and the
    steps a batch takes under a budget, from the last `depth_window` batches: a halting model
    stops well before most budgets, and pricing every batch at its cap would let almost no
    request keep its budget under bursty load.

    Every batch is observed on the server's event loop, so an observation is O(1): the fit keeps
    the window's normal equations as running sums, the depth quantiles are computed only when a
    decision asks for them, and a run judged against the fit (`_shifted`) is judged against the
    one its plan computed (refitting at every batch costs the event loop time it needs for
    requests).

    A latency budget is priced at a tail of the runs (`tail_ms`), the 0.95 quantile by default,
    not the 0.99 a cost model's calibration uses: a window holds a few hundred runs or fewer,
    whose 0.99 quantile is their largest one or two, which one pause of the machine sets, and
    it would refuse budgets nearly every run keeps.

    A window follows a change of the machine's speed only as new runs replace old ones, and
    after a burst (slow runs: the machine contended) a lightly loaded server makes few: its
    plans would price every run at the burst's speed for minutes, and degrade or reject requests
    a quick run keeps. So when `SHIFT_RUNS` of the last few runs came off their reference in one
    direction by more than `SHIFT_FACTOR` (the mean of the window's earlier runs of the same
    steps and rows where it holds a few, the fit otherwise), and the window would take longer
    than `TAIL_S` to renew at the pace they came, the runs from before them are rescaled by
    their median ratio: the window keeps its split of the time and takes the level of now
    (`_rescale_before_streak`)."""

    def __init__(
        self,
        cap: int,
        window: int = 200,
        depth_window: int = 50,
        depth_quantile: float = 0.9,
        tail_quantile: float = 0.95,
    ):
        self.cap, self.depth_quantile, self.tail_quantile = cap, depth_quantile, tail_quantile
        self._seen: deque[tuple[int, int, float]] = deque(maxlen=window)
        self._pairs: Counter[tuple[int, int]] = Counter()  # distinct (steps, rows) in the window
        self._gram, self._moment = np.zeros((3, 3)), np.zeros(3)  # X^T X and X^T y over the window
        self._until_resum = window  # sums are rebuilt from the window now and then: no drift
        self._depths: deque[tuple[int, int]] = deque(maxlen=depth_window)  # (least budget, most steps)
        # Both as Python floats: a plan reads them hundreds of times, and numpy scalars are far
        # slower to read one at a time.
        self._expected: list[float] | None = None  # steps expected under budget 0..cap, when asked
        self._coef: tuple[float, float, float] | None = None  # the fit, when asked
        # The last fit over batches of 3 or more (steps, rows): how the time splits between a
        # run, its steps and its rows. A server whose batches are all alike (one client sending
        # one request at a time: one row, one step budget) cannot tell them apart, and pricing
        # it all per row would price a full batch's share of a row at a lone run's whole time:
        # the pace (`share_ms`) would then refuse a lone client the server keeps up with.
        self._shape: tuple[float, float, float] | None = None
        self._tail: tuple[float, float] | None = None  # (when, the recent runs' quantile of run - fit)
        self._pair_ms: Counter[tuple[int, int]] = Counter()  # summed ms of the window's runs per pair
        # The last runs as judged (`_shifted`): (steps, rows), ms, which way they came off their
        # reference (+1 slower, -1 quicker, 0 neither), their ratio to it, and whether it was the fit.
        self._recent: deque[tuple[tuple[int, int], float, int, float, bool]] = deque(maxlen=SHIFT_RUNS + SHIFT_STRAYS)
        # Each batch's own run (`observe`'s run_ms) and when it was observed, beside `_seen`.
        self._run_ms: deque[tuple[float, float]] = deque(maxlen=window)
        self.clock = time.monotonic  # seconds; which runs are recent enough to price a latency (`tail_ms`)
        # False: never rescaled, so a change of speed is followed only as new runs replace the
        # window's (the ablation in experiments/serving/speed_change.py).
        self.follow_speed = True

    def observe(
        self, steps: int, ms: float, rows: int = 1, budget: int | None = None, run_ms: float | None = None
    ) -> None:
        """A batch of `rows` whose slowest row took `steps` ran in `ms`; `budget`: the least step
        budget among its rows (None: unknown, as if every row was stopped by its budget);
        `run_ms`: the run itself, to its last row's answer (None: `ms`), which a latency budget
        bounds: `ms` also holds the time until the server got to the next run."""
        steps, rows = int(np.clip(steps, 1, self.cap)), max(int(rows), 1)
        self._depths.append((steps if budget is None else int(budget), steps))
        shift = self._shifted(steps, rows, float(ms))
        if len(self._seen) == self._seen.maxlen:
            steps_out, rows_out, _ = self._seen[0]
            if len(self._pairs) == 3 and self._pairs[steps_out, rows_out] == 1:
                self._fit()  # the last window that splits the time: its split is kept (`_shape`)
            self._add(*self._seen[0], sign=-1.0)
        self._seen.append((steps, rows, float(ms)))
        self._run_ms.append((self.clock(), float(ms if run_ms is None else run_ms)))
        self._add(steps, rows, float(ms), sign=1.0)
        self._until_resum -= 1
        if self._until_resum == 0:
            self._until_resum = self._seen.maxlen
            self._gram[:], self._moment[:] = 0.0, 0.0
            self._pair_ms.clear()
            for steps_seen, rows_seen, ms_seen in self._seen:
                self._add(steps_seen, rows_seen, ms_seen, sign=1.0, count=False)
                self._pair_ms[steps_seen, rows_seen] += ms_seen
        self._expected = self._coef = self._tail = None
        if shift is not None and self.follow_speed:
            self._rescale_before_streak(*shift)

    def _shifted(self, steps: int, rows: int, ms: float) -> tuple[float, int] | None:
        """Whether this run makes `SHIFT_RUNS` of the last `SHIFT_RUNS` + `SHIFT_STRAYS` runs off
        their references by more than `SHIFT_FACTOR` in one direction: then (their median ratio
        to their references, how many runs from this one back are at the new speed), else None.
        A run's reference: the mean of the window's runs of its (steps, rows) from before those
        last runs where there are `SAME_PAIR_RUNS`, else the fit where one splits the time (the
        bound used before any prices runs of many rows far above their time, on purpose), else
        none: not judged."""
        pair = (steps, rows)
        mine = [run_ms for p, run_ms, *_ in self._recent if p == pair]
        seen = self._pairs[pair] - len(mine)
        by_fit = seen < SAME_PAIR_RUNS
        if not by_fit:
            reference = (self._pair_ms[pair] - sum(mine)) / seen
        elif len(self._pairs) >= 3 or self._shape is not None:
            a, b, c = self._fit()  # the fit this run's plan computed, where one did (cached)
            reference = a + b * steps + c * steps * rows
        else:
            reference = 0.0
        ratio = ms / reference if reference > 0 else 1.0
        way = 1 if ratio > SHIFT_FACTOR else -1 if ratio * SHIFT_FACTOR < 1 else 0
        self._recent.append((pair, ms, way, ratio, by_fit))
        for direction in (1, -1):
            off = [run for run in self._recent if run[2] == direction]
            if len(off) >= SHIFT_RUNS:
                # The ratios judged by the fit, again against the fit without these last runs:
                # each entered it as it came, and drew it toward the new speed.
                before = self._fit_without([run[0] for run in self._recent][:-1])
                ratios = [
                    run_ms / max(before[0] + before[1] * s + before[2] * s * r, 1e-12) if fit else run_ratio
                    for (s, r), run_ms, _, run_ratio, fit in off
                ]
                new_speed = len(self._recent)
                self._recent.clear()  # judged afresh from here, the runs at the new speed counted
                return float(np.median(ratios)), new_speed
        return None

    def _fit_without(self, pairs: list[tuple[int, int]]) -> tuple[float, float, float]:
        """The fit of the window without its last runs (of these `pairs`, oldest first), where
        the rest still splits the time; else the fit of the whole window."""
        last = list(self._seen)[len(self._seen) - len(pairs) :] if 0 < len(pairs) <= len(self._seen) else []
        if [(steps, rows) for steps, rows, _ in last] != pairs or len(self._pairs) < 3:
            return self._fit()  # (a window shorter than the runs judged: they are all it has)
        gram, moment = self._gram.copy(), self._moment.copy()
        for steps, rows, ms in last:
            features = np.array([1.0, steps, steps * rows])
            gram -= np.outer(features, features)
            moment -= ms * features
        coef = np.maximum(np.linalg.lstsq(gram, moment, rcond=1e-9)[0], 0.0)
        return tuple(coef.tolist()) if coef.sum() > 0 else self._fit()

    def _rescale_before_streak(self, ratio: float, newest: int) -> None:
        """The window's runs but for its `newest` (measured at the new speed), scaled by `ratio`
        (ms and run ms): the speed they were measured at is gone. Only where the window would
        take longer than `TAIL_S` to renew at the pace those newest runs came: under load it
        renews within seconds on its own, and a change there is as likely one of the work (a
        halting model's batches of one (steps, rows) cost more when more of their rows go deep).
        At light load such a change is taken for one of speed too, and the other batch sizes
        priced at its level until they run. O(window), once a change."""
        came = [when for when, _ in self._run_ms][-newest:]
        if len(came) < 2 or self._seen.maxlen * (came[-1] - came[0]) / (len(came) - 1) <= TAIL_S:
            return
        kept = len(self._seen) - newest
        old = [i < kept for i in range(len(self._seen))]
        seen = [(s, r, ms * ratio if o else ms) for o, (s, r, ms) in zip(old, self._seen, strict=True)]
        runs = [(at, ms * ratio if o else ms) for o, (at, ms) in zip(old, self._run_ms, strict=True)]
        self._seen.clear()
        self._pairs.clear()
        self._pair_ms.clear()
        self._gram[:], self._moment[:] = 0.0, 0.0
        for run in seen:
            self._seen.append(run)
            self._add(*run, sign=1.0)
        self._run_ms.clear()
        self._run_ms.extend(runs)
        self._until_resum = self._seen.maxlen
        self._expected = self._coef = self._tail = None

    def _add(self, steps: int, rows: int, ms: float, sign: float, count: bool = True) -> None:
        features = np.array([1.0, steps, steps * rows])
        self._gram += sign * np.outer(features, features)
        self._moment += sign * ms * features
        if count:
            self._pairs[steps, rows] += int(sign)
            self._pair_ms[steps, rows] += sign * ms
            if not self._pairs[steps, rows]:
                del self._pairs[steps, rows], self._pair_ms[steps, rows]

    def _fit(self) -> tuple[float, float, float]:
        if self._coef is None:
            if len(self._pairs) >= 3:  # the least-squares fit through the normal equations
                # rcond: X^T X squares X's condition, so directions X barely spans (all batches at
                # one step: steps and the constant collinear) are cut as lstsq on X would cut them.
                a, b, c = np.maximum(np.linalg.lstsq(self._gram, self._moment, rcond=1e-9)[0], 0.0).tolist()
                if a + b + c > 0:
                    self._shape = (a, b, c)
            elif self._shape is not None:  # too few distinct batches to split the time: the last
                # fit's split (what a full batch costs beside a lone row), at the level of now
                a, b, c = self._shape  # the window's sum of ms over its sum of fitted ms: X^T y
                fitted = a * self._gram[0, 0] + b * self._gram[0, 1] + c * self._gram[0, 2]  # and X^T X's
                level = float(self._moment[0]) / fitted if fitted > 0 else 1.0  # first row (sums)
                a, b, c = a * level, b * level, c * level
            else:  # never a fit: all time per step and row, as a bound (a high quantile, not the
                # maximum: one slow run, a pause of the machine, would otherwise price every
                # batch until it left the window)
                per_step_row = [ms / (steps * rows) for steps, rows, ms in self._seen]
                a, b, c = 0.0, 0.0, float(np.quantile(per_step_row, 0.9, method="higher"))
            self._coef = (a, b, c)
        return self._coef

    def expected_steps(self, budget: int) -> float:
        """The steps a batch under `budget` takes (see `_expected_steps`)."""
        budget = min(max(int(budget), 0), self.cap)
        if not self._depths:
            return float(budget)
        if self._expected is None:
            self._expected = self._expected_steps().tolist()
        return self._expected[budget]

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
        return a + b * taken + c * taken * rows

    def most_steps_within(self, slack_ms: float, requested: int, rows: int = 1) -> int:
        """The most steps (<= requested) whose estimated run fits `slack_ms`; 0 if none."""
        for s in range(requested, 0, -1):
            if self.estimate(s, rows) <= slack_ms:
                return s
        return 0

    def tail_ms(self, steps: int, rows: int = 1) -> float:
        """A run of `rows` rows under a budget of `steps` at the `tail_quantile` of this server's
        recent runs: the estimate (a mean) plus the `tail_quantile` of run - fitted over the
        window's runs of the last `TAIL_S` seconds, or its last `TAIL_RUNS` runs where those
        are more (a run: `observe`'s run_ms). A latency budget bounds one run, not the mean of
        many; the excess is added, not scaled (what makes a served run slow, the hand-off to the
        worker and the event loop holding the interpreter, does not grow with the batch); and a
        burst's slow runs stop adding to the price once they are `TAIL_S` old and `TAIL_RUNS`
        runs have come since, not once two hundred have (they leave the fitted mean only then, or
        at light load, when a change of speed rescales them: `_rescale_before_streak`)."""
        if not self._seen:
            return 0.0
        now = self.clock()
        if self._tail is None or now - self._tail[0] > TAIL_REFRESH_S:
            a, b, c = self._fit()
            steps_seen, rows_seen, _ = np.asarray(self._seen).T
            at, run_ms = np.asarray(self._run_ms).T
            recent = at >= now - TAIL_S
            recent[-TAIL_RUNS:] = True
            excess = (run_ms - (a + b * steps_seen + c * steps_seen * rows_seen))[recent]
            tail = float(np.quantile(excess, self.tail_quantile, method="higher")) if excess.size else 0.0
            self._tail = (now, max(tail, 0.0))
        return self.estimate(steps, rows) + self._tail[1]

    def tail_steps_within(self, ms: float, requested: int, rows: int = 1) -> int:
        """The most steps (<= requested) whose run of `rows` rows ends within `ms` at the tail
        (`tail_ms`, which does not fall as steps grow: a bisection); 0 if none; `requested`
        before any batch (nothing measured yet)."""
        if not self._seen:
            return requested
        fits = lambda s: self.tail_ms(s, rows) <= ms * (1 + 1e-9)  # noqa: E731
        low, high = 0, max(int(requested), 0)  # fits(low) holds (0 steps: nothing to run); find the last that does
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return low

    def share_ms(self, steps: int, rows: int, full_batch: int) -> float:
        """What `rows` rows under a budget of `steps` cost the server's throughput: their share of
        a full batch's run. Under load batches fill up; pricing rows at the batch that happens
        to be running would put the few rows that came while a quick run ran on a fallback, and
        keep batches small."""
        return rows * self.estimate(steps, full_batch) / full_batch

    def runs(self, budgets: list[int], parts: list[np.ndarray], start_ms: float, full_batch: int):
        """Rows with these step budgets run as `parts` (lists of row indices, one run each, one
        after the other from `start_ms`): each row's finish, the runs' total ms, and their
        share of the server's time (`share_ms`)."""
        finish, total, share = [0.0] * len(budgets), 0.0, 0.0
        for part in parts:
            steps = max(budgets[j] for j in part)
            total += self.estimate(steps, len(part))
            share += self.share_ms(steps, len(part), full_batch)
            for j in part:
                finish[j] = start_ms + total
        return finish, total, share
