"""The controller's plans, with constructed service times and accuracy tables: deadlines hold,
the server's pace holds, expected correct answers are maximized, the quickest plan within the
tolerance is taken, priorities degrade in order; and the service-time estimates it reads."""

import copy

import numpy as np
import pytest

from adaptive.serving.accuracy_table import AccuracyTable, accuracy_lookup
from adaptive.serving.controller import Controller
from adaptive.serving.decisions import REJECTED, Decision, Request
from adaptive.serving.fallbacks import Fallback
from adaptive.serving.service_times import SHIFT_FACTOR, SHIFT_RUNS, TAIL_RUNS, TAIL_S, ServiceTimes
from tests.helpers import ROOT

INF = float("inf")


def decide(c: Controller, steps: int, waited_ms: float = 0.0, rows: int = 1, time_ms: float = INF) -> Decision:
    """The decision of the first of `rows` equal requests."""
    return c.plan([Request(steps, waited_ms)] * rows, time_ms)[0]


def ladder(accuracy=None, fallback_accuracy=None, **options) -> Controller:
    """SLA 20 ms, headroom 0.8: 16 ms a request. Primary: 1 ms + 2 ms per step and row;
    fallback (cap 2): 1 ms whatever the rows."""
    rung = Fallback(cap=2, accuracy=fallback_accuracy)
    c = Controller(8, sla_ms=20.0, fallbacks=(rung,), accuracy=accuracy, **options)
    for steps, rows in [(1, 1), (4, 1), (8, 1), (2, 4)]:
        c.observe("primary", steps, 1.0 + 2.0 * steps * rows, rows=rows)
    for rows in (1, 4, 16):
        c.observe("fallback", 2, 1.0, rows=rows)
    return c


def test_a_budget_under_the_primarys_least_run_never_runs_on_it():
    """Steps 0 (the server's "under one step of the primary", e.g. less memory than it needs):
    a fallback that keeps the budget answers, or nothing does, in every mode."""
    for mode in ("adaptive", "static", "shed"):
        c = ladder(mode=mode)
        decisions = c.plan([Request(0, 0.0, fallback_steps=2), Request(0, 0.0, fallback_steps=0)])
        adaptive = Decision("fallback", "fallback", 2) if mode == "adaptive" else Decision("rejected", None, 0)
        assert decisions == [adaptive, Decision("rejected", None, 0)], mode


def test_the_ladder_degrades_in_order_and_rejects_what_cannot_be_on_time():
    assert decide(Controller(8, 20.0, fallbacks=(Fallback(),)), 8) == Decision("ok", "primary", 8)  # nothing measured
    c = ladder()
    assert decide(c, 6) == Decision("ok", "primary", 6)  # 13 ms fits 16
    assert decide(c, 8) == Decision("degraded", "primary", 7)  # 17 ms does not; 7 steps (15 ms) do
    assert decide(c, 8, waited_ms=8.0).steps == 3  # 8 ms left: 3 steps (7 ms)
    assert decide(c, 8, waited_ms=13.5) == Decision("fallback", "fallback", 2)  # 2.5 ms left: no primary step
    assert decide(c, 8, waited_ms=15.5) == Decision("rejected", None, 0)  # not even the fallback is on time
    # The server's pace, a row priced at its share of a full batch (32 rows): one step costs
    # (1 + 64) / 32 ms of the primary, 1 / 32 ms of the fallback.
    assert decide(c, 8, time_ms=2.0) == Decision("fallback", "fallback", 2)
    assert decide(c, 8, time_ms=2.1) == Decision("degraded", "primary", 1)
    assert decide(c, 8, time_ms=0.01) == Decision("rejected", None, 0)  # a pace no model keeps
    # Without a table the ladder's order: two rows on the primary at 3 steps (13 ms) beat one at 7.
    assert c.plan([Request(8, 0.0), Request(8, 0.0)]) == [Decision("degraded", "primary", 3)] * 2
    no_fallback = Controller(8, 20.0)
    no_fallback.observe("primary", 1, 3.0)
    assert decide(no_fallback, 8, waited_ms=14.0).status == "rejected"
    assert not Controller(8, 20.0, max_queue=3).admit(3)  # a full queue defers
    static = Controller(8, 20.0, mode="static")
    static.observe("primary", 8, 400.0)
    assert decide(static, 8, 1e6) == Decision("ok", "primary", 8) and static.admit(10**6)
    assert static.plan([Request(20, 0.0)]) == [Decision("ok", "primary", 8)]  # clipped to the cap
    for bad in ({"tolerance": -0.1}, {"headroom": 0.0}, {"utilization": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            Controller(8, 20.0, **bad)


def test_the_plan_maximizes_expected_correct_answers_and_lower_priorities_degrade_first():
    """Accuracy 0.5 + 0.05 a step, fallback 0.8: two rows both on the primary fit at 3 steps
    (0.65 each), both on the fallback score 1.6; one at 7 steps (0.85) and one on the fallback
    answer more (1.65). The primary goes to
    priority 0, whichever comes first."""
    accuracy = {(None, s): 0.5 + 0.05 * s for s in range(1, 9)}
    c = ladder(accuracy, fallback_accuracy=0.8)
    low_first = c.plan([Request(8, 0.0, priority=2), Request(8, 0.0, priority=0)])
    assert low_first == [Decision("fallback", "fallback", 2), Decision("degraded", "primary", 7)]
    # Equal priorities: the freshest row has the slack for the primary's longer run.
    stale_first = c.plan([Request(8, 6.0), Request(8, 0.0)])
    assert stale_first == [Decision("fallback", "fallback", 2), Decision("degraded", "primary", 7)]
    # A pace of 10 ms: the primary at 4 steps (0.7; 8.03 ms) loses to the fallback (0.8).
    assert decide(c, 8, time_ms=10.0) == Decision("fallback", "fallback", 2)
    strong = ladder(accuracy, fallback_accuracy=0.6)
    assert decide(strong, 8, time_ms=10.0) == Decision("degraded", "primary", 4)  # 0.7 beats 0.6
    # Every row the plan cannot serve on time is rejected, lowest priority first.
    crowd = [Request(8, 0.0, priority=i % 3) for i in range(6)]
    served = strong.plan(crowd, time_ms=3.0)  # the primary cannot run; the fallback (1 ms) can
    assert all(d.model == "fallback" for d in served)
    tight = Controller(8, 20.0, fallbacks=(Fallback(),))
    tight.observe("primary", 1, 100.0)
    for rows in (1, 2, 4):
        tight.observe("fallback", 1, 1.0 * rows, rows=rows)  # 1 ms a row, however full the batch
    shed = tight.plan(crowd, time_ms=2.5)  # two rows fit the pace: the two of priority 0
    assert [d.model for d in shed] == ["fallback", None, None, "fallback", None, None]


def test_the_pace_is_the_rows_share_of_the_server_at_the_arrival_rate():
    c = Controller(8, 20.0, utilization=0.85)
    assert c.batch_time_ms(4, arrival_rate=1000.0) == pytest.approx(3.4)  # 0.85 x 4 rows / 1000 per s
    assert c.batch_time_ms(4, 1000.0, queued=16) == pytest.approx(1.7)  # 16 queued, cleared in 16 ms
    assert c.batch_time_ms(4, 0.0) == INF and c.batch_time_ms(1, 10.0) == pytest.approx(85.0)
    # A primary of 10 ms a run + 0.1 ms a row-step: 2 rows run 10.2 ms, over their 8.5 ms share at
    # 200/s; but under load batches fill up, and 32 rows at 13.2 ms are well within the pace.
    c = Controller(1, 20.0, fallbacks=(Fallback(),), utilization=0.85, max_batch=32)
    for rows in (1, 4, 32):
        c.observe("primary", 1, 10.0 + 0.1 * rows, rows=rows)
        c.observe("fallback", 1, 0.5 + 0.001 * rows, rows=rows)
    pace = c.batch_time_ms(2, arrival_rate=200.0)
    assert pace == pytest.approx(8.5) and c.plan([Request(1, 0.0)] * 2, pace)[0].model == "primary"
    assert c.plan([Request(1, 0.0)] * 2, c.batch_time_ms(2, 6000.0))[0].model == "fallback"  # 2400/s at most


def test_fewer_experts_is_a_rung_chosen_by_validation_accuracy():
    """A MoE primary measured at 1 ms + 2 ms a step with its trained k and 1 ms + 1 ms a step at
    k = 1; SLA 20 ms, 16 ms a request: with all experts 7 steps fit, with one expert 8."""

    def controller(accuracy=None, **options):
        c = Controller(8, sla_ms=20.0, expert_budgets=(1,), accuracy=accuracy, **options)
        for steps in (1, 4, 8):
            c.observe("primary", steps, 1.0 + 2.0 * steps)
            c.observe("primary", steps, 1.0 + 1.0 * steps, experts=1)
        if c.fallbacks:
            c.observe("fallback", 1, 1.0)
        return c

    assert decide(controller(), 6) == Decision("ok", "primary", 6)  # what was asked fits: no table needed
    assert decide(controller(), 8) == Decision("degraded", "primary", 8, 1)  # no table: the most steps
    experts_matter = {(None, 7): 0.95, (1, 8): 0.80, (None, 2): 0.7, (1, 4): 0.75}
    assert decide(controller(experts_matter), 8) == Decision("degraded", "primary", 7)
    steps_matter = {(None, 7): 0.80, (1, 8): 0.95}
    assert decide(controller(steps_matter), 8) == Decision("degraded", "primary", 8, 1)
    assert decide(controller(experts_matter), 8, 11.0) == Decision("degraded", "primary", 4, 1)  # 5 ms left
    # A fallback scored on the same split competes on accuracy with the primary's points.
    with_fallback = controller(experts_matter, fallbacks=(Fallback(accuracy=0.9),))
    assert decide(with_fallback, 8) == Decision("degraded", "primary", 7)  # 0.95 beats 0.9
    assert decide(with_fallback, 8, 11.0) == Decision("fallback", "fallback", 1)  # 0.9 beats 0.75
    untabled = controller(fallbacks=(Fallback(accuracy=0.9),))  # no primary table: ladder order
    assert decide(untabled, 8, 11.0) == Decision("degraded", "primary", 4, 1)
    # What was asked fits, but a quicker point is as accurate within the tolerance: that one.
    flat = {(None, 6): 0.9, (None, 3): 0.898, (None, 2): 0.85, (1, 4): 0.9, (1, 1): 0.5}
    assert decide(controller(flat), 6) == Decision("ok", "primary", 4, 1)  # 5 ms beats 7 ms (3 steps)
    assert decide(controller(flat, tolerance=0.0), 6) == Decision("ok", "primary", 4, 1)  # as accurate
    assert decide(controller({(None, 6): 0.9, (None, 5): 0.8}), 6) == Decision("ok", "primary", 6)
    fewer_is_better = {(None, 1): 0.9, (None, 7): 0.8, (1, 8): 0.85}  # every point that fits competes
    assert decide(controller(fewer_is_better), 8) == Decision("degraded", "primary", 1)
    assert decide(controller(), 8, 14.5) == Decision("rejected", None, 0)  # 1.5 ms left: nothing fits


def test_accuracy_lookup_reads_the_artifact_table():
    meta = {"accuracy_at_budgets": {"experts": [1, 2], "accuracy": [[0.5, 0.6], [0.7, 0.9]]}}
    assert accuracy_lookup(meta) == {(1, 1): 0.5, (1, 2): 0.6, (None, 1): 0.7, (None, 2): 0.9}
    static = {"accuracy_at_budgets": {"experts": None, "accuracy": [[None, None, 0.8]]}}
    assert accuracy_lookup(static) == {(None, 3): 0.8}  # no step budget below a static model's depth
    assert accuracy_lookup({"accuracy_at_budgets": {"experts": None, "accuracy": [[0.4]]}}) == {(None, 1): 0.4}
    assert accuracy_lookup({}) == {}


def test_the_accuracy_table_is_the_one_scored_in_batches_like_the_one_about_to_run():
    """One expert a token is within the tolerance of two in batches of 500 and clearly worse in
    small ones (fewer tokens share its slots): a single request keeps both experts, a big batch
    gets the cheaper point; under load, the fallback beats one expert only where that is worse."""
    served = {"batch": [1, 4], "accuracy": [[[0.58, 0.925], [0.58, 0.994]], [[0.62, 0.98], [0.58, 0.994]]]}
    main = {"batch": 500, "experts": [1, 2], "accuracy": [[0.61, 0.99], [0.56, 0.994]]}
    table = AccuracyTable.from_meta({"accuracy_at_budgets": {**main, "by_batch": served}})
    assert [table.at(rows)[1, 2] for rows in (1, 3, 4, 499, 500, 4096)] == [0.925, 0.925, 0.98, 0.98, 0.99, 0.99]
    assert table.at(1)[None, 2] == 0.994 and (None, 3) not in table.at(1)
    unsized = AccuracyTable.from_meta({"accuracy_at_budgets": {"experts": None, "accuracy": [[0.4, 0.7]]}})
    assert unsized.at(1) == unsized.at(10**6) == {(None, 1): 0.4, (None, 2): 0.7}  # an older table: every batch
    assert not AccuracyTable.from_meta({})

    def controller(**options):
        c = Controller(2, sla_ms=50.0, expert_budgets=(1,), accuracy=table, **options)
        for steps, rows in [(1, 1), (2, 1), (1, 16), (2, 500)]:  # 0.01 ms a step and row; half that at k = 1
            c.observe("primary", steps, 0.01 * steps * rows, rows=rows)
            c.observe("primary", steps, 0.005 * steps * rows, rows=rows, experts=1)
        if c.fallbacks:
            c.observe("fallback", 1, 0.001)
        return c

    assert decide(controller(), 2, rows=1) == Decision("ok", "primary", 2)  # 0.925 is no match for 0.994
    assert decide(controller(), 2, rows=500) == Decision("ok", "primary", 2, 1)  # 0.99: as good, quicker
    # 30 ms waited, 10 ms left: two experts fit 500 of 600 rows (the rest rejected), one expert all.
    assert decide(controller(), 2, 30.0, rows=600) == Decision("ok", "primary", 2, 1)
    with_fallback = controller(fallbacks=(Fallback(accuracy=0.97),))
    assert decide(with_fallback, 2, 30.0, rows=600) == Decision("ok", "primary", 2, 1)  # 0.99 beats 0.97
    # 0.015 ms left for one row: two experts at 2 steps do not fit; one expert (0.925) does.
    assert decide(with_fallback, 2, 39.985, rows=1) == Decision("fallback", "fallback", 1)  # 0.97 beats 0.925


def test_service_time_estimates_follow_measurements_and_batch_size():
    times = ServiceTimes(8, window=6)
    assert times.estimate(5) == 0.0
    times.observe(2, 4.0, rows=2)
    assert times.estimate(4, rows=2) == 8.0  # too few batches for a fit: all time per step and row
    for steps, rows in [(1, 1), (4, 1), (8, 16), (2, 8), (6, 4)]:
        times.observe(steps, 1.0 + 0.5 * steps + 0.25 * steps * rows, rows=rows)
    times.observe(3, 1.0 + 1.5 + 0.25 * 3 * 2, rows=2)  # the window forgets the first guess
    assert times.estimate(5, rows=10) == pytest.approx(1.0 + 2.5 + 12.5)  # unseen (steps, rows)
    assert times.most_steps_within(10.001, requested=8, rows=4) == 6  # 1 + 3 + 6 = 10 (and 1 + 3.5 + 7 at 7)


def test_batches_all_alike_keep_the_last_fits_split_of_the_time_at_todays_level():
    """One client, one request at a time: every batch is one row at one step, and the window
    soon holds nothing else. The time's split (a run, its steps, its rows) comes from the last
    fit that could tell them apart, its level from the runs now; a full batch's share of a row
    stays a fraction of a lone run, and the lone client is served, not refused for pace."""
    times = ServiceTimes(8, window=20)
    for steps, rows in [(1, 1), (4, 1), (8, 16), (2, 8), (6, 4)]:  # the warm-up's batches
        times.observe(steps, 1.0 + 0.5 * steps + 0.25 * steps * rows, rows=rows)
    for _ in range(20):  # then only lone rows at one step
        times.observe(1, 1.0 + 0.5 + 0.25, rows=1)
    assert times.estimate(1, rows=32) == pytest.approx(1.0 + 0.5 + 0.25 * 32)  # not 32 x 1.75
    for _ in range(20):  # and the machine now twice as slow
        times.observe(1, 2 * (1.0 + 0.5 + 0.25), rows=1)
    assert times.estimate(1) == pytest.approx(3.5)  # the level of now
    assert times.estimate(1, rows=32) == pytest.approx(2 * (1.0 + 0.5 + 0.25 * 32))  # the split kept
    assert times.share_ms(1, 1, 32) < times.estimate(1) / 3
    c = Controller(8, sla_ms=1000.0)
    c.service["primary", None] = times
    rate = 1000.0 / 3.6  # the client sends as soon as each 3.5 ms answer comes back
    assert decide(c, 1, time_ms=c.batch_time_ms(1, rate)) == Decision("ok", "primary", 1)


def test_a_latency_price_adds_the_tail_of_the_runs_and_forgets_it_as_they_leave_the_window():
    """A latency budget bounds one run: the estimate (a mean) plus the p95 of how far recent runs
    came above it, which follows the server: slow runs price budgets until they leave the window
    or grow old, and one pause of the machine does not."""
    times, now = ServiceTimes(4, window=100), [0.0]
    times.clock = lambda: now[0]
    assert times.tail_steps_within(0.001, requested=3) == 3  # nothing measured: the cost model's price stands
    pairs = [(steps, rows) for steps in (1, 2, 4) for rows in (1, 3)]

    def runs(slow_every: int) -> None:
        for i in range(100):
            steps, rows = pairs[i % len(pairs)]
            times.observe(steps, 1.0 + 0.5 * steps + 6.0 * (i % slow_every == 0), rows=rows, budget=steps)

    runs(slow_every=100)
    assert times.tail_ms(2) < times.estimate(2) + 0.5  # one run in 100 was 6 ms slow
    runs(slow_every=10)
    assert times.tail_ms(2) > times.estimate(2) + 4.0  # one in ten was: their excess over the mean prices
    assert times.tail_steps_within(times.tail_ms(2), requested=4) == 2
    assert times.tail_steps_within(times.tail_ms(1) - 0.01, requested=4) == 0
    for i in range(100):  # the slow runs leave the window
        steps, rows = pairs[i % len(pairs)]
        times.observe(steps, 1.0 + 0.5 * steps, rows=rows, budget=steps)
    assert times.tail_ms(2) == pytest.approx(times.estimate(2)) == pytest.approx(2.0)
    assert times.tail_steps_within(2.0, requested=4) == 2
    runs(slow_every=10)
    assert times.tail_ms(2) > times.estimate(2) + 4.0
    now[0] += TAIL_S + 1.0  # a burst's slow runs grow old; the next runs are quick
    for i in range(TAIL_RUNS):
        steps, rows = pairs[i % len(pairs)]
        times.observe(steps, 1.0 + 0.5 * steps, rows=rows, budget=steps)
    assert times.tail_ms(2) < times.estimate(2) + 0.5


def test_after_a_burst_a_lone_clients_runs_are_priced_at_the_speed_of_now_within_a_few_runs():
    """During a burst every run is 3x slow (the machine contended) and the window fills with
    them; then a lone client's quick runs come two seconds apart, and the window would price
    them at the burst's speed for two hundred runs, each request degraded meanwhile. Eight runs
    in a row far off their reference say the speed changed: the runs before them are rescaled
    to the level of now, and the split of the time is kept. Under load (a window that renews
    within `TAIL_S`) it is left to renew; a stable speed's noise, even wide, changes nothing, nor
    do runs the linear fit misprices where the window holds earlier runs of their kind."""
    rng, now = np.random.default_rng(0), [0.0]

    def cost(steps: int, rows: int) -> float:
        return 0.5 + 0.45 * steps + 0.05 * steps * rows

    times = ServiceTimes(8)
    times.clock = lambda: now[0]
    pairs = [(int(rng.integers(1, 9)), int(rng.integers(1, 33))) for _ in range(400)]
    for steps, rows in pairs[:200]:  # quiet traffic of every batch size (a run every 50 ms)
        now[0] += 0.05
        times.observe(steps, cost(steps, rows) * rng.lognormal(0, 0.1), rows=rows)
    assert times.estimate(8, rows=1) == pytest.approx(cost(8, 1), rel=0.15)
    for steps, rows in pairs[200:]:  # the burst: back-to-back batches, all 3x slow
        now[0] += 0.01
        times.observe(steps, 3 * cost(steps, rows) * rng.lognormal(0, 0.1), rows=rows)
    assert times.estimate(8, rows=1) == pytest.approx(3 * cost(8, 1), rel=0.15)
    under_load = copy.deepcopy(times)
    for _ in range(SHIFT_RUNS):  # quick again under load: the window renews on its own
        now[0] += 0.01
        under_load.observe(8, cost(8, 1) * rng.lognormal(0, 0.1), rows=1)
    assert under_load.estimate(8, rows=1) > 2 * cost(8, 1)
    c = Controller(8, sla_ms=10.0)
    c.service["primary", None] = times
    for i in range(SHIFT_RUNS + 1):  # a lone client after the burst, a request every 2 s
        assert decide(c, 8).steps < 8  # 3 x 4.5 ms is over the 8 ms horizon
        now[0] += 2.0
        pause = 2.2 if i == 2 else 1.0  # one run the machine paused in: the streak goes on
        times.observe(8, pause * cost(8, 1) * rng.lognormal(0, 0.1), rows=1)
    assert times.estimate(8, rows=1) == pytest.approx(cost(8, 1), rel=0.15)
    assert times.estimate(8, rows=32) == pytest.approx(cost(8, 32), rel=0.15)  # the split kept
    assert decide(c, 8) == Decision("ok", "primary", 8)
    lone_cost = lambda steps, rows: cost(steps, rows) + 10.0 * (rows == 1)  # noqa: E731  (its own executable)
    mixed = ServiceTimes(8)
    mixed.clock = lambda: now[0]
    for i, (steps, rows) in enumerate(pairs[:200]):  # one run in 40 a lone row at 8 steps
        steps, rows = (8, 1) if i % 40 == 0 else (steps, rows)
        now[0] += 0.05
        mixed.observe(steps, lone_cost(steps, rows), rows=rows)
    assert SHIFT_FACTOR * mixed.estimate(8, rows=1) < lone_cost(8, 1)  # the linear fit misprices it
    mixed._rescale_before_streak = lambda ratio, newest: pytest.fail(f"a change of the work rescaled by {ratio}")
    for _ in range(2 * SHIFT_RUNS):  # judged against the earlier lone rows, not the fit: no change
        now[0] += 2.0
        mixed.observe(8, lone_cost(8, 1), rows=1)
    steady = ServiceTimes(8)
    steady.clock = lambda: now[0]
    steady._rescale_before_streak = lambda ratio, newest: pytest.fail(f"a stable speed rescaled by {ratio}")
    for steps, rows in pairs * 10:  # 4000 runs a second apart at one speed, with wide noise
        now[0] += 1.0
        steady.estimate(steps, rows)  # each run's plan
        steady.observe(steps, cost(steps, rows) * rng.lognormal(0, 0.3), rows=rows)


def test_the_running_fit_equals_a_fresh_fit_over_the_window():
    """The fit is kept as running sums over a sliding window (observations are O(1)); after many
    evictions and rebuilds of the sums it is still the least-squares fit of the window itself."""
    rng = np.random.default_rng(0)
    times = ServiceTimes(8, window=50)
    for _ in range(537):
        steps, rows = int(rng.integers(1, 9)), int(rng.integers(1, 17))
        times.observe(steps, 0.3 + 0.7 * steps + 0.05 * steps * rows + rng.normal(0, 0.2), rows=rows)
    seen = np.asarray(times._seen, float)
    features = np.stack([np.ones(len(seen)), seen[:, 0], seen[:, 0] * seen[:, 1]], 1)
    fresh = np.maximum(np.linalg.lstsq(features, seen[:, 2], rcond=None)[0], 0.0)
    assert len(seen) == 50 and times._fit() == pytest.approx(fresh, rel=1e-6, abs=1e-9)


def test_a_budget_is_priced_at_the_steps_batches_under_it_take():
    """A halting model given 8 steps stops at 2: batches under a budget of 8 are priced at 2
    steps, not 8; a batch stopped by its budget says only that the model goes on past it."""
    times = ServiceTimes(8)
    assert times.expected_steps(8) == 8  # nothing seen: the budget
    for _ in range(10):
        times.observe(2, 2.0, rows=1, budget=8)  # halted on its own at 2 of 8
    assert [times.expected_steps(b) for b in (1, 2, 3, 8)] == [1, 2, 2, 2]
    assert times.estimate(8) == times.estimate(2) == pytest.approx(2.0)
    stopped = ServiceTimes(8)
    for _ in range(10):
        stopped.observe(3, 3.0, rows=1, budget=3)  # stopped by its budget: deeper inputs may go to 8
    assert [stopped.expected_steps(b) for b in (2, 3, 4, 8)] == [2, 3, 4, 8]
    mixed = ServiceTimes(8)  # one batch in ten goes to 6: the 0.9 quantile covers it
    for i in range(20):
        mixed.observe(6 if i % 10 == 0 else 2, 1.0, budget=8)
    assert mixed.expected_steps(8) == 6 and mixed.expected_steps(4) == 4
    assert ServiceTimes(8).expected_steps(3) == 3 and ServiceTimes(8, depth_quantile=0.5).expected_steps(3) == 3


def by_budget(budgets: np.ndarray) -> list[np.ndarray]:
    """The engine's split for these tests: one run per distinct step budget, tightest first."""
    return [np.flatnonzero(budgets == b) for b in np.unique(budgets)]


def test_a_plan_times_the_primarys_runs_as_the_server_splits_them():
    """A primary of 10 ms a run + 0.1 ms a step and row, 16 ms a request: rows asking 8 and 1
    steps fit one run at 8 steps (11.6 ms), but split by budget the 8-step row finishes after
    two runs (20.9 ms): then both run at 1 step, the only plan that is on time for both."""

    def controller(**options) -> Controller:
        c = Controller(8, sla_ms=20.0, fallbacks=(Fallback(),), **options)
        for steps, rows in [(1, 1), (8, 1), (8, 2), (4, 16)]:
            c.observe("primary", steps, 10.0 + 0.1 * steps * rows, rows=rows)
        if c.fallbacks:
            c.observe("fallback", 1, 1.0)
        return c

    mixed = [Request(8, 0.0), Request(1, 0.0)]
    assert controller().plan(mixed) == [Decision("ok", "primary", 8), Decision("ok", "primary", 1)]
    split = controller(groups=by_budget).plan(mixed)
    assert split == [Decision("degraded", "primary", 1), Decision("ok", "primary", 1)]
    assert controller(groups=by_budget).plan([Request(8, 0.0)] * 2) == [Decision("ok", "primary", 8)] * 2  # one run


def test_the_fallback_runs_first_and_every_row_of_a_run_must_be_on_time():
    c = ladder()
    # The stale row (2 ms left) goes to the fallback, which runs first (1 ms): the fresh one has
    # 15 - 1 ms for the primary, 6 steps (13 ms), not the 7 (15 ms) its own slack would allow.
    plan = c.plan([Request(8, 1.0), Request(8, 14.0)])
    assert plan == [Decision("degraded", "primary", 6), Decision("fallback", "fallback", 2)]
    # A fallback of 1 ms a row, no primary in time: priority 0 has 2 ms left, so its run may
    # hold two rows, not three, however much slack the others have.
    tight = Controller(8, 20.0, fallbacks=(Fallback(),))
    tight.observe("primary", 1, 100.0)
    for rows in (1, 2, 4):
        tight.observe("fallback", 1, 1.0 * rows, rows=rows)
    plan = tight.plan([Request(8, 14.0, priority=0), Request(8, 0.0, priority=1), Request(8, 0.0, priority=1)])
    assert [d.model for d in plan] == ["fallback", "fallback", None]


def test_between_equals_the_freshest_row_gets_the_primary():
    """Pace 10 ms, fallback 0.6: one row on the primary at 4 steps (8.03 ms of pace, 0.7) and one
    on the fallback beat both on the fallback; both rows have slack for it, the fresher gets it."""
    strong = ladder({(None, s): 0.5 + 0.05 * s for s in range(1, 9)}, fallback_accuracy=0.6)
    plan = strong.plan([Request(8, 2.0), Request(8, 0.0)], time_ms=10.0)
    assert plan == [Decision("fallback", "fallback", 2), Decision("degraded", "primary", 4)]


def test_without_a_table_a_served_row_outranks_any_steps_another_row_gains():
    """Paces just past the primary's price of one row at each step budget, short of that plus a
    fallback row: one more step for one row must not cost the other its answer."""
    for accuracy in (None, {(None, s): 0.5 + 0.05 * s for s in range(1, 9)}):  # no table; no fallback score
        c = ladder(accuracy)
        fallback_row = c.service["fallback", None].share_ms(2, 1, c.max_batch)
        for steps in range(1, 9):
            time_ms = c.service["primary", None].share_ms(steps, 1, c.max_batch) + fallback_row / 2
            plan = c.plan([Request(8, 0.0), Request(8, 0.0)], time_ms)
            assert all(d.model is not None for d in plan), (steps, plan)


def test_no_request_gives_up_more_than_the_tolerance_for_the_others():
    """Idle server: one request asks 8 steps, 31 ask 1; 0.05 a step. Summed over 32 rows, a
    tolerance of 0.005 would let the first give up three steps (0.15) to make the batch quicker."""
    c = Controller(8, sla_ms=50.0, accuracy={(None, s): 0.5 + 0.05 * s for s in range(1, 9)}, tolerance=0.005)
    for steps, rows in [(1, 1), (8, 1), (4, 16), (2, 32)]:
        c.observe("primary", steps, 1.0 + 0.01 * steps * rows, rows=rows)
    plan = c.plan([Request(8, 0.0)] + [Request(1, 0.0)] * 31)
    assert plan[0] == Decision("ok", "primary", 8) and set(plan[1:]) == {Decision("ok", "primary", 1)}


def test_budgets_alike_in_steps_taken_and_accuracy_are_one_point_the_largest():
    """A halting model that stops at 2 of 8 steps: budgets 2 to 8 run alike and score alike, so
    a request asking 8 keeps 8 (room for a hard input) and the plan weighs two points, not nine."""
    c = Controller(8, 50.0, accuracy={(None, 1): 0.6, **{(None, s): 0.99 for s in range(2, 9)}})
    for rows in (1, 4, 16):
        c.observe("primary", 2, 1.0 + 0.5 * rows, rows=rows, budget=8)
    assert c._points([Request(8, 0.0)]) == [(None, 1), (None, 8)]
    assert decide(c, 8) == Decision("ok", "primary", 8)
    assert decide(c, 3) == Decision("ok", "primary", 3)


def test_the_fallback_runs_within_each_request_s_own_budget_or_not_at_all():
    """The fallback (cap 2) under pressure: a request whose budget buys the fallback one step
    gets one, a request whose budget buys none is rejected rather than answered over it."""
    c = ladder()
    assert c.plan([Request(8, 13.5, fallback_steps=1)]) == [Decision("fallback", "fallback", 1)]
    assert c.plan([Request(8, 13.5, fallback_steps=5)]) == [Decision("fallback", "fallback", 2)]  # at most its cap
    assert c.plan([Request(8, 13.5, fallback_steps=0)]) == [Decision("rejected", None, 0)]
    mixed = c.plan([Request(1, 13.5, fallback_steps=0), Request(1, 13.5, fallback_steps=1)])
    assert mixed == [Decision("rejected", None, 0), Decision("fallback", "fallback", 1)]
    # Scored at the steps it runs: with {steps: accuracy} a one-step fallback (0.3) loses to the
    # primary's one step (0.55) where a two-step one (0.8) would win.
    accuracy = {(None, s): 0.5 + 0.05 * s for s in range(1, 9)}
    scored = ladder(accuracy, fallback_accuracy={1: 0.3, 2: 0.8})
    assert scored.plan([Request(8, 0.0, fallback_steps=2)], time_ms=2.1) == [Decision("fallback", "fallback", 2)]
    assert scored.plan([Request(8, 0.0, fallback_steps=1)], time_ms=2.1)[0].model == "primary"


def shedding(**options) -> Controller:
    """Shed mode, SLA 20 ms (16 ms a request), batches of up to 4: 1 ms + 2 ms a step and row."""
    c = Controller(8, sla_ms=20.0, mode="shed", max_batch=4, **options)
    for steps, rows in [(1, 1), (4, 1), (8, 1), (2, 4)]:
        c.observe("primary", steps, 1.0 + 2.0 * steps * rows, rows=rows)
    return c


def test_shedding_rejects_on_arrival_what_the_queue_ahead_makes_late():
    c = shedding()
    assert not c.sheds(1, 3) and c.sheds(1, 4)  # behind one: a batch of 2, 13 ms fits 16, 17 ms does not
    assert c.sheds(1, 20)  # a budget over the cap is priced at the cap
    assert not c.sheds(4, 1) and c.sheds(8, 1)  # one full batch ahead (9 ms) + its own (3 ms); two: 21 ms
    assert not c.sheds(0, 8)  # an empty queue admits: 17 ms is a prediction, and running it tests it
    assert c.admit(10**6)  # shedding is by deadline, never by queue length
    for mode in ("static", "adaptive"):
        assert not Controller(8, 20.0, mode=mode).sheds(10**6, 8)
    with pytest.raises(ValueError, match="is not one of adaptive, static, shed"):
        Controller(8, 20.0, mode="drop")


def test_shedding_serves_each_request_at_its_budget_or_rejects_it_before_it_runs():
    c = shedding()
    ok = Decision("ok", "primary", 2)
    assert c.plan([Request(2, 0.0)] * 2) == [ok, ok]  # one run of 9 ms: both on time
    # Three rows at 2 steps (13 ms): the two that waited 6 and 12 ms would be late; without the
    # stalest the run takes 9 ms and the one that waited 6 ms is on time.
    assert c.plan([Request(2, 0.0), Request(2, 6.0), Request(2, 12.0)]) == [ok, ok, REJECTED]
    # Every row would be late (8 steps: 17 ms alone, 33 ms for two): the stalest is rejected, the
    # freshest runs, late by the estimate; a row already past its deadline never runs.
    assert c.plan([Request(20, 0.0), Request(8, 2.0)]) == [Decision("ok", "primary", 8), REJECTED]
    assert c.plan([Request(8, 16.5)]) == [REJECTED] and c.plan([Request(8, 16.5), Request(1, 0.0)])[0] == REJECTED
    assert c.plan([Request(1, 0.0)], time_ms=0.0) == [Decision("ok", "primary", 1)]  # no pace: that is the controller's
    split = shedding(groups=by_budget).plan([Request(1, 0.0), Request(3, 5.0)])  # 3 ms, then 7: 10 + 5
    assert split == [Decision("ok", "primary", 1), Decision("ok", "primary", 3)]
    assert shedding(groups=by_budget).plan([Request(1, 0.0), Request(3, 7.0)])[1] == REJECTED  # 10 + 7 > 16


def test_serving_reads_only_accuracy_tables_scored_on_validation():
    table = {"experts": None, "accuracy": [[0.4, 0.7]]}
    for split in ("validation", None):  # a table without a split predates the key: export scored validation
        meta = {"accuracy_at_budgets": {**table, **({"split": split} if split else {})}}
        assert accuracy_lookup(meta) == AccuracyTable.from_meta(meta).at(1) == {(None, 1): 0.4, (None, 2): 0.7}
    on_test = {"accuracy_at_budgets": {**table, "split": "test"}}
    for read in (accuracy_lookup, AccuracyTable.from_meta):
        with pytest.raises(ValueError, match="scored on the 'test' split; serving reads only 'validation'"):
            read(on_test)


def two_rungs(accuracy=None, int8=0.85, pruned=0.8, **options) -> Controller:
    """Primary as in `ladder`; two fallback rungs of cap 2: "int8" (1 ms + 1 ms a row) and
    "pruned" (0.5 ms whatever the rows), scored `int8` and `pruned` (None: not comparable)."""
    rungs = (Fallback("int8", 2, int8), Fallback("pruned", 2, pruned))
    c = Controller(8, sla_ms=20.0, fallbacks=rungs, accuracy=accuracy, **options)
    for steps, rows in [(1, 1), (4, 1), (8, 1), (2, 4)]:
        c.observe("primary", steps, 1.0 + 2.0 * steps * rows, rows=rows)
    for rows in (1, 4, 16):
        c.observe("int8", 2, 1.0 + 1.0 * rows, rows=rows)
        c.observe("pruned", 2, 0.5, rows=rows)
    return c


def test_a_ladder_of_fallbacks_takes_the_most_accurate_rung_that_is_on_time():
    """16 ms a request; the primary's least run is 3 ms. With 4 ms left the primary (0.65 at one
    step) loses to int8 (2 ms, 0.85); with 1.5 ms left only the pruned rung (0.5 ms) is on time;
    with 0.25 ms nothing is. A batch's rows all go to one rung."""
    accuracy = {(None, s): 0.6 + 0.05 * s for s in range(1, 9)}
    c = two_rungs(accuracy)
    assert decide(c, 8) == Decision("degraded", "primary", 7)  # 15 ms, 0.95
    assert decide(c, 8, waited_ms=12.0) == Decision("fallback", "int8", 2)
    assert decide(c, 8, waited_ms=14.5) == Decision("fallback", "pruned", 2)
    assert decide(c, 8, waited_ms=15.75) == REJECTED
    crowd = c.plan([Request(8, 11.0)] * 3)  # 5 ms left: int8 serves all three in 4 ms
    assert crowd == [Decision("fallback", "int8", 2)] * 3
    assert len({d.model for d in c.plan([Request(8, 11.0)] * 6)} - {None}) == 1  # one rung a batch
    # The pruned rung as accurate (within the tolerance) and quicker: it is taken.
    assert decide(two_rungs(accuracy, pruned=0.848), 8, waited_ms=12.0) == Decision("fallback", "pruned", 2)
    # Each rung within the request's own budget: int8 cannot answer within it, pruned can.
    both = c.plan([Request(8, 12.0, fallback_steps=(0, 2))])
    assert both == [Decision("fallback", "pruned", 2)]


def test_without_scores_the_ladder_s_order_picks_the_fallback():
    """No accuracy anywhere: the primary first, then the rungs in the order given."""
    c = two_rungs(int8=None, pruned=None)
    assert decide(c, 8, waited_ms=12.0) == Decision("degraded", "primary", 1)  # on time: the primary
    assert decide(c, 8, waited_ms=13.5) == Decision("fallback", "int8", 2)  # both rungs on time: the first
    assert decide(c, 8, waited_ms=14.5) == Decision("fallback", "pruned", 2)  # only the second is
    with pytest.raises(ValueError, match="unique"):
        Controller(8, 20.0, fallbacks=(Fallback("a"), Fallback("a")))
    with pytest.raises(ValueError, match="primary"):
        Controller(8, 20.0, fallbacks=(Fallback("primary"),))
    # With a primary table, unscored rungs still keep their order (the quicker second one is
    # ranked more than the tolerance lower, so "as good and quicker" does not pick it).
    accuracy = {(None, s): 0.6 + 0.05 * s for s in range(1, 9)}
    assert decide(two_rungs(accuracy, int8=None, pruned=None), 8, waited_ms=13.5) == Decision("fallback", "int8", 2)


def test_a_rung_no_better_and_no_quicker_than_another_gets_no_plan():
    """Planning costs a plan per rung and primary point: a rung another beats on accuracy and
    time is not tried, unless it gives some request more steps within its budget."""
    c = two_rungs(int8=0.85, pruned=0.8)
    c2 = Controller(8, 20.0, fallbacks=(*c.fallbacks, Fallback("slow", 2, 0.8)))
    c2.service = {**c.service, ("slow", None): ServiceTimes(2)}
    for rows in (1, 4, 16):
        c2.observe("slow", 2, 3.0 + 1.0 * rows, rows=rows)  # slower than int8, less accurate
    assert [f.name for f in c2._rungs([Request(8, 0.0)])] == ["int8", "pruned"]
    assert [f.name for f in c2._rungs([Request(8, 0.0, fallback_steps=(1, 1, 2))])] == ["int8", "pruned", "slow"]


def test_a_ladder_whose_first_rung_is_beaten_still_plans_when_nothing_is_on_time():
    """The first rung is beaten by a later one (less accurate, slower) and nothing is on time:
    every row is rejected (this raised on an empty list of plans)."""
    accuracy = {(None, s): 0.6 + 0.05 * s for s in range(1, 9)}
    beaten = Controller(8, 20.0, fallbacks=(Fallback("int4", 2, 0.8), Fallback("int8", 2, 0.85)), accuracy=accuracy)
    for rows in (1, 16):
        beaten.observe("primary", 1, 3.0 * rows, rows=rows)
        beaten.observe("int4", 2, 2.0, rows=rows)
        beaten.observe("int8", 2, 1.0, rows=rows)
    assert [f.name for f in beaten._rungs([Request(8, 0.0)])] == ["int8"]
    assert beaten.plan([Request(8, 15.9)]) == [REJECTED]  # 0.1 ms left: nothing on time
    assert beaten.plan([Request(8, 14.5)]) == [Decision("fallback", "int8", 2)]


def test_a_rung_quicker_only_for_few_rows_is_still_planned():
    """Rung a is quicker at a full batch, b for one row: with 1.5 ms left only b is on time for
    a lone request, so b must not be left out of the plans."""
    accuracy = {(None, s): 0.6 + 0.05 * s for s in range(1, 9)}
    lone = Controller(8, 20.0, fallbacks=(Fallback("a", 2, 0.8), Fallback("b", 2, 0.8)), accuracy=accuracy)
    lone.observe("primary", 1, 30.0)
    for rows in (1, 8, 16):  # a: 3 ms + 0.05 a row; b: 0.5 ms + 0.5 a row
        lone.observe("a", 2, 3.0 + 0.05 * rows, rows=rows)
        lone.observe("b", 2, 0.5 + 0.5 * rows, rows=rows)
    assert [f.name for f in lone._rungs([Request(8, 14.5)])] == ["a", "b"]
    assert lone.plan([Request(8, 14.5)]) == [Decision("fallback", "b", 2)]


def test_an_unscored_rung_far_down_the_ladder_serves_rather_than_rejects():
    """Below a weak primary (0.15) with a tolerance of 0.05, the third unscored rung's rank would
    reach 0, the value of a rejected row, and the quicker rejection won."""
    weak = {(None, s): 0.15 for s in range(1, 9)}
    rungs = tuple(Fallback(name, 2) for name in ("x", "y", "z"))
    far = Controller(8, 20.0, fallbacks=rungs, accuracy=weak, tolerance=0.05)
    far.observe("primary", 1, 30.0)
    for name, ms in (("x", 30.0), ("y", 30.0), ("z", 1.0)):
        far.observe(name, 2, ms)
    assert far.plan([Request(8, 10.0)]) == [Decision("fallback", "z", 2)]


def test_an_operating_point_scored_at_its_cap_alone_still_exits_early_before_falling_back():
    """An operating point's table holds its one accuracy measured, at the cap: the steps below it
    are unscored, not forbidden. They rank under the scored cap (taken only when it does not fit,
    the most steps that fit first) and over an unscored fallback; a static primary has none."""
    point = {(None, 8): 0.9}
    c = ladder(point)
    assert decide(c, 6) == Decision("ok", "primary", 6)  # asked for 6: its own point
    assert decide(c, 8) == Decision("degraded", "primary", 7)  # 8 steps miss the 16 ms; 7 do
    assert decide(c, 8, waited_ms=8.0) == Decision("degraded", "primary", 3)
    assert decide(c, 8, waited_ms=13.5) == Decision("fallback", "fallback", 2)  # no primary step fits
    assert decide(c, 8, time_ms=2.1) == Decision("degraded", "primary", 1)  # the ladder's order
    assert decide(ladder(point, least_steps=8), 8) == Decision("fallback", "fallback", 2)
    # A scored fallback ranks by its score: above the primary's unscored steps when it is higher.
    assert decide(ladder(point, fallback_accuracy=0.89), 8) == Decision("fallback", "fallback", 2)
    assert decide(ladder(point, fallback_accuracy=0.5), 8) == Decision("degraded", "primary", 7)


def test_stale_service_times_admit_a_latency_budget_unless_an_idle_run_says_one_step_is_over_it():
    from adaptive.serving.controller import STALE_S

    c = ladder()  # the primary's one step: 3 ms
    now = c.clock()
    c.clock = lambda: now
    assert c.steps_within_ms("primary", None, 2.0, 8, 1) == 0  # fresh: its runs say no step fits
    now += 2 * STALE_S + 1.0  # nothing ran since: runs from a slow moment must not refuse for good
    assert c.steps_within_ms("primary", None, 2.0, 8, 1) == 8
    c.observe_idle("primary", 2.5)  # but a keep-warm run just took 2.5 ms for one step
    assert c.steps_within_ms("primary", None, 2.0, 8, 1) == 0
    assert c.steps_within_ms("primary", None, 3.0, 8, 1) == 8  # one step fits 3 ms: priced as before
    now += 2 * STALE_S + 1.0  # the idle run is stale too
    assert c.steps_within_ms("primary", None, 2.0, 8, 1) == 8


def test_a_static_primary_never_takes_a_row_whose_budget_is_below_its_depth():
    """A static model runs all its steps (least_steps = its cap): a row asking fewer goes to the
    fallback, or is rejected, even in a batch beside rows the primary serves."""
    c = ladder(least_steps=8)
    mixed = c.plan([Request(2, 0.0, fallback_steps=2), Request(8, 0.0, fallback_steps=2)])
    assert mixed[0] == Decision("fallback", "fallback", 2) and mixed[1].model is not None
    # 8 steps (17 ms) miss the 16 ms: an adaptive primary would run 7, a static one cannot
    assert c.plan([Request(8, 0.0, fallback_steps=2)]) == [Decision("fallback", "fallback", 2)]
    assert ladder().plan([Request(8, 0.0, fallback_steps=2)]) == [Decision("degraded", "primary", 7)]
    alone = Controller(8, 20.0, least_steps=8)
    assert alone.plan([Request(2, 0.0), Request(8, 0.0)]) == [
        Decision("rejected", None, 0),
        Decision("ok", "primary", 8),
    ]
    assert ladder().plan([Request(2, 0.0, fallback_steps=2)])[0] == Decision("ok", "primary", 2)  # adaptive: it may
    for mode in ("static", "shed"):  # the baselines never run it below its depth either
        c = Controller(8, 20.0, mode=mode, least_steps=8)
        assert c.plan([Request(2, 0.0), Request(8, 0.0)]) == [
            Decision("rejected", None, 0),
            Decision("ok", "primary", 8),
        ]


def test_a_flops_budget_too_small_for_the_trained_experts_runs_at_fewer():
    """A MoE primary with expert budgets 2 and 1 below the trained one: a request whose budget
    buys no step at the trained experts but some at fewer (`expert_steps`, most experts first)
    runs at the most experts it allows, and is ok: that is its own point. Adaptive plans run a
    batch at one expert budget (each request alone here); static gives each row its own;
    shedding runs the trained experts only."""
    for least in (1, 8):  # an adaptive model, then a static one (it runs all 8 steps)
        fits_two = Request(0, 0.0, expert_steps=(8, 8))
        fits_one = Request(0, 0.0, expert_steps=(0 if least == 1 else 5, 8))
        fits_none = Request(0, 0.0, expert_steps=(0, 0))
        want = [Decision("ok", "primary", 8, 2), Decision("ok", "primary", 8, 1), REJECTED]
        static = Controller(8, sla_ms=20.0, mode="static", expert_budgets=(2, 1), least_steps=least)
        assert static.plan([fits_two, fits_one, fits_none]) == want
        assert static.plan([fits_none])[0].reason == "no expert budget of the primary keeps the request's budget"
        adaptive = Controller(8, sla_ms=20.0, expert_budgets=(2, 1), least_steps=least)
        assert [adaptive.plan([r])[0] for r in (fits_two, fits_one, fits_none)] == want
    # An adaptive model whose budget buys 3 steps at 2 experts or 6 at 1: the more accurate point
    # (0.65 at 2 experts against 0.62 or 0.80 at 1).
    for gain, want in ((0.02, Decision("ok", "primary", 3, 2)), (0.05, Decision("ok", "primary", 6, 1))):
        table = {(2, s): 0.5 + 0.05 * s for s in range(1, 9)} | {(1, s): 0.5 + gain * s for s in range(1, 9)}
        adaptive = Controller(8, sla_ms=20.0, expert_budgets=(2, 1), accuracy=table)
        assert adaptive.plan([Request(0, 0.0, expert_steps=(3, 6))]) == [want]
    shedding = Controller(8, sla_ms=20.0, mode="shed", expert_budgets=(2, 1))
    assert shedding.plan([Request(0, 0.0, expert_steps=(8, 8))]) == [REJECTED]


def test_after_a_slow_run_the_freshest_request_still_runs_once_the_primary_has_been_idle():
    """One pause of the machine makes every step look over the SLA. Rejecting on that estimate
    forever would never correct it: once the primary has not run for a horizon, the freshest row
    not yet past its deadline runs at the quickest point, and its run corrects the estimate."""
    c = Controller(6, sla_ms=30.0)  # a horizon of 24 ms
    c.observe("primary", 1, 500.0)
    assert c.plan([Request(6, 0.0)]) == [REJECTED]  # it has just run: the estimate stands
    start = c.clock()
    c.clock = lambda: start + 1.0  # a second without a run
    rows = [Request(6, 5.0), Request(6, 1.0), Request(6, 30.0)]  # the last is past its deadline
    assert c.plan(rows) == [REJECTED, Decision("degraded", "primary", 1), REJECTED]
    assert c.plan([Request(6, 30.0)]) == [REJECTED]  # nothing live to probe with
    for _ in range(50):  # the probes' runs
        c.observe("primary", 1, 2.0)
    assert c.plan([Request(6, 0.0)])[0].model == "primary"  # and it has just run: no probe needed


def test_an_estimate_just_under_the_horizon_or_over_a_paced_share_is_still_corrected_once_idle():
    """An estimate a burst inflated to just under the horizon (24 ms of 24) leaves no row that has
    waited at all on time, and one over the share of time the arrival rate leaves a batch rejects
    every row: either way nothing runs and nothing corrects it. Once the primary has not run for
    a horizon, a rejected live row runs at its quickest point."""
    for waited, time_ms in ((0.5, np.inf), (0.0, 7.6)):
        c = Controller(6, sla_ms=30.0)
        for _ in range(50):
            c.observe("primary", 1, 23.9)
        assert c.plan([Request(6, waited)], time_ms) == [REJECTED]  # it has just run: the estimate stands
        start = c.clock()
        c.clock = lambda start=start: start + 1.0  # a second without a run
        assert c.plan([Request(6, waited)], time_ms)[0].model == "primary"
        assert c.plan([Request(6, 30.0)], time_ms) == [REJECTED]  # past its deadline: nothing to probe with


def test_a_point_plans_avoid_after_a_slow_run_still_gets_a_row_once_idle():
    """Plans that avoid a point whose estimate a slow run inflated would never measure it again:
    a fallback taking every row, or fewer experts on a MoE primary. Once such a point has not run
    for a horizon, one live row goes there, and runs there correct the estimate."""
    c = Controller(6, sla_ms=30.0, fallbacks=(Fallback(cap=2),))
    c.observe("primary", 1, 500.0)
    c.observe("fallback", 2, 1.0)
    assert [d.model for d in c.plan([Request(6, 0.0)] * 2)] == ["fallback"] * 2
    start = c.clock()
    c.clock = lambda: start + 1.0
    decisions = c.plan([Request(6, 3.0), Request(6, 1.0)])
    assert decisions == [Decision("fallback", "fallback", 2), Decision("degraded", "primary", 1)]
    c.observe("fallback", 2, 1.0)  # the fallback has run: only the stale primary is probed
    moe = Controller(6, sla_ms=30.0, expert_budgets=(1,))
    moe.observe("primary", 1, 10_000.0)  # a paused run at the trained experts
    for _ in range(20):
        moe.observe("primary", 1, 1.0, experts=1)
    assert moe.plan([Request(6, 0.0)])[0].experts == 1
    start = moe.clock()
    moe.clock = lambda: start + 1.0
    moe.observe("primary", 1, 1.0, experts=1)  # fewer experts keep running; the trained point does not
    assert moe.plan([Request(6, 0.0)]) == [Decision("degraded", "primary", 1, None)]
    for _ in range(50):
        moe.observe("primary", 1, 1.0)  # its runs
    assert moe.plan([Request(6, 0.0)])[0] == Decision("ok", "primary", 6, None)


def test_the_speed_change_experiments_replay_runs_on_the_controller_as_built():
    """experiments/serving/speed_change.py replays the server's own controller: it must keep
    running as the controller changes, and its ablation must still be one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_change", ROOT / "experiments/serving/speed_change.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    window, follow = (replay.replay("full_batches", 2.0, 0, follow) for follow in (False, True))
    assert window["degraded"] >= 150 and follow["degraded"] <= 12, (window, follow)
    assert window["rejected"] == follow["rejected"] == 0
