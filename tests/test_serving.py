"""The budgeted server: bad requests get a 4xx and the server keeps serving, budgets are never
exceeded, the controller degrades in ladder order, the load generator accounts for every
request."""

import asyncio
import json
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adaptive.controller import Controller, Decision, ServiceTimes
from adaptive.engine import Engine
from adaptive.export import export_run
from adaptive.loadgen import schedule, summarize
from adaptive.server import Server
from tests.helpers import train_tiny

GOOD = [1.0, 0, 0, 1, -1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    train_tiny(root / "run", 20)
    return Engine.from_artifact(export_run(root / "run", root / "art"), buckets=(1, 4, 16))


def _with_client(engine, scenario, controller=None, fallback=None):
    async def main():
        ctrl = controller or Controller(engine.cap, 1000.0, has_fallback=fallback is not None)
        server = Server(engine, ctrl, fallback=fallback, max_batch=16)
        async with TestClient(TestServer(server.app())) as client:
            return await scenario(client, server)

    return asyncio.run(main())


def test_each_bad_request_gets_its_4xx_and_the_next_good_one_is_answered(engine):
    bad = [
        (b"not json", 400, "Expecting value"),
        (json.dumps([1, 2]).encode(), 400, 'with "x"'),
        (json.dumps({"y": GOOD}).encode(), 400, 'with "x"'),
        (json.dumps({"x": GOOD[:5]}).encode(), 400, "must have shape [16]; got [5]"),
        (json.dumps({"x": ["a"] * 16}).encode(), 400, "array of numbers"),
        (json.dumps({"x": [float("nan")] * 16}).encode(), 400, "NaN or Inf"),
        (json.dumps({"x": GOOD, "budget": 0}).encode(), 400, "below one step"),
        (json.dumps({"x": GOOD, "budget": "lots"}).encode(), 400, "must be a number"),
        (json.dumps({"x": GOOD, "budget": 1, "unit": "hours"}).encode(), 400, "is not one of"),
        (json.dumps({"x": GOOD, "priority": -1}).encode(), 400, "priority"),
        (b"{" + b" " * (2 << 20) + b"}", 413, "over"),
    ]

    async def scenario(client, server):
        for body, code, message in bad:
            response = await client.post("/predict", data=body)
            assert response.status == code, (body[:40], await response.text())
            error = (await response.json())["error"]
            assert message in error and "\n" not in error
            good = await client.post("/predict", json={"x": GOOD, "budget": 3})
            assert good.status == 200 and (await good.json())["status"] == "ok"
        health = await (await client.get("/healthz")).json()
        metrics = await (await client.get("/metrics")).text()
        return health, metrics

    health, metrics = _with_client(engine, scenario)
    assert health["status"] == "ok" and health["cap"] == 6 and health["input_shape"] == [16]
    assert 'adaptive_requests_total{status="ok"} 11' in metrics
    assert f"adaptive_bad_requests_total {11}" in metrics
    assert "adaptive_request_loop_cpu_ms " in metrics
    assert 'adaptive_request_latency_ms_bucket{le="+Inf"} 11' in metrics
    assert "adaptive_budget_adherence 1.000000" in metrics


def test_budgets_in_answers_never_exceed_the_request_or_the_cap(engine):
    rng = np.random.default_rng(0)

    async def scenario(client, server):
        async def one(i):
            x = rng.choice([-1.0, 0.0, 1.0], 16).tolist()
            budget = int(rng.integers(1, 10))
            answer = await (await client.post("/predict", json={"x": x, "budget": budget, "priority": i % 3})).json()
            return budget, answer

        return await asyncio.gather(*(one(i) for i in range(60)))

    for budget, answer in _with_client(engine, scenario):
        assert answer["status"] in ("ok", "degraded")
        assert 1 <= answer["steps"] <= answer["budget_steps"] <= min(budget, 6)


def test_the_ladder_degrades_in_order_and_rejects_what_cannot_be_on_time():
    """Service times measured at 1 ms + 2 ms a step (primary) and 1 ms (fallback), SLA 20 ms,
    headroom 0.8: a request's slack is 16 ms / (1 + 0.5 priority) minus what it waited."""
    c = Controller(8, sla_ms=20.0, has_fallback=True, fallback_cap=2)
    assert c.decide(8, waited_ms=0.0).steps == 8  # nothing measured yet: optimistic
    for steps in (1, 4, 8):
        c.observe("primary", steps, 1.0 + 2.0 * steps)
    c.observe("fallback", 2, 1.0)
    assert c.decide(6, 0.0) == Decision("ok", "primary", 6)  # 13 ms fits 16
    assert c.decide(8, 0.0) == Decision("degraded", "primary", 7)  # 17 ms does not; 7 steps (15 ms) do
    assert c.decide(8, 8.0).steps == 3  # 8 ms waited: 8 ms of slack left, 3 steps (7 ms)
    assert c.decide(8, 0.0, priority=2).steps == 3  # lower priority, less slack: 8 ms
    assert c.decide(8, 13.5) == Decision("fallback", "fallback", 2)  # 2.5 ms left: no primary step fits
    assert c.decide(8, 14.5, priority=2) == Decision("degraded", "primary", 1)  # late for its class, not the SLA
    # ... but not rescued at the expense of a queue whose share of time (2 ms) that step (3 ms) exceeds.
    assert c.decide(8, 14.5, priority=2, share_ms=2.0) == Decision("rejected", None, 0)
    assert c.decide(8, 19.5) == Decision("rejected", None, 0)  # cannot be on time at all
    no_fallback = Controller(8, 20.0)
    no_fallback.observe("primary", 1, 3.0)
    assert no_fallback.decide(8, 18.0).status == "rejected"
    assert not Controller(8, 20.0, max_queue=3).admit(3)  # a full queue defers
    static = Controller(8, 20.0, mode="static")
    static.observe("primary", 8, 400.0)
    assert static.decide(8, 1e6) == Decision("ok", "primary", 8) and static.admit(10**6)


def test_fewer_experts_is_a_rung_chosen_by_validation_accuracy():
    """A MoE primary measured at 1 ms + 2 ms a step with its trained k and 1 ms + 1 ms a step at
    k = 1; SLA 20 ms, slack 16 ms: with all experts 7 steps fit, with one expert 8."""

    def controller(accuracy=None, **options):
        c = Controller(8, sla_ms=20.0, expert_budgets=(1,), accuracy=accuracy, **options)
        for steps in (1, 4, 8):
            c.observe("primary", steps, 1.0 + 2.0 * steps)
            c.observe("primary", steps, 1.0 + 1.0 * steps, experts=1)
        c.observe("fallback", 1, 1.0)
        return c

    assert controller().decide(6, 0.0) == Decision("ok", "primary", 6)  # what was asked fits: no table needed
    assert controller().decide(8, 0.0) == Decision("degraded", "primary", 8, 1)  # no table: the most steps
    experts_matter = {(None, 7): 0.95, (1, 8): 0.80, (None, 2): 0.7, (1, 4): 0.75}
    assert controller(experts_matter).decide(8, 0.0) == Decision("degraded", "primary", 7)
    steps_matter = {(None, 7): 0.80, (1, 8): 0.95}
    assert controller(steps_matter).decide(8, 0.0) == Decision("degraded", "primary", 8, 1)
    assert controller(experts_matter).decide(8, 11.0) == Decision("degraded", "primary", 4, 1)  # 5 ms left
    # A fallback scored on the same split competes on accuracy with the primary's points.
    with_fallback = controller(experts_matter, has_fallback=True, fallback_accuracy=0.9)
    assert with_fallback.decide(8, 0.0) == Decision("degraded", "primary", 7)  # 0.95 beats 0.9
    assert with_fallback.decide(8, 11.0) == Decision("fallback", "fallback", 1)  # 0.9 beats 0.75
    untabled = controller(has_fallback=True, fallback_accuracy=0.9)  # no primary table: ladder order
    assert untabled.decide(8, 11.0) == Decision("degraded", "primary", 4, 1)
    # What was asked fits, but a cheaper point is as accurate within the tolerance: that one.
    flat = {(None, 6): 0.9, (None, 3): 0.898, (None, 2): 0.85, (1, 4): 0.9, (1, 1): 0.5}
    assert controller(flat).decide(6, 0.0) == Decision("ok", "primary", 4, 1)  # 5 ms beats 7 ms (3 steps)
    assert controller(flat, tolerance=0.0).decide(6, 0.0) == Decision("ok", "primary", 4, 1)  # as accurate
    assert controller({(None, 6): 0.9, (None, 5): 0.8}).decide(6, 0.0) == Decision("ok", "primary", 6)
    fewer_is_better = {(None, 1): 0.9, (None, 7): 0.8, (1, 8): 0.85}  # under load, all that fit compete
    assert controller(fewer_is_better).decide(8, 0.0) == Decision("degraded", "primary", 1)
    late_for_its_class = controller().decide(8, 17.5, priority=2)  # 17.5 + 2 ms <= 20 with one expert
    assert late_for_its_class == Decision("degraded", "primary", 1, 1)
    assert controller().decide(8, 18.5) == Decision("rejected", None, 0)


def test_accuracy_lookup_reads_the_artifact_table():
    from adaptive.accuracy_table import accuracy_lookup

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
    from adaptive.accuracy_table import AccuracyTable

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
        c.observe("fallback", 1, 0.001)
        return c

    assert controller().decide(2, 0.0, rows=1) == Decision("ok", "primary", 2)  # 0.925 is no match for 0.994
    assert controller().decide(2, 0.0, rows=500) == Decision("ok", "primary", 2, 1)  # 0.99: as good, cheaper
    # 30 ms waited, 10 ms of slack: two experts fit one row but not 600 rows (12 ms); one expert does (6 ms).
    assert controller().decide(2, 30.0, rows=600) == Decision("degraded", "primary", 2, 1)
    with_fallback = controller(has_fallback=True, fallback_accuracy=0.97)
    assert with_fallback.decide(2, 30.0, rows=600) == Decision("degraded", "primary", 2, 1)  # 0.99 beats 0.97
    # 0.015 ms of slack for one row: two experts at 2 steps do not fit; one expert (0.925) does.
    assert with_fallback.decide(2, 39.985, rows=1) == Decision("fallback", "fallback", 1)  # 0.97 beats 0.925
    with pytest.raises(ValueError, match="tolerance -0.1 must be >= 0"):
        Controller(8, 20.0, tolerance=-0.1)


def test_a_failing_batch_is_answered_with_500_and_the_server_goes_on(engine, monkeypatch):
    run, calls = engine.run, []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return run(*args)

    monkeypatch.setattr(engine, "run", fails_once)

    async def scenario(client, server):
        failed = await client.post("/predict", json={"x": GOOD})
        good = await client.post("/predict", json={"x": GOOD})
        metrics = await (await client.get("/metrics")).text()
        return failed.status, await failed.json(), good.status, metrics

    code, failed, good_code, metrics = _with_client(engine, scenario)
    assert code == 500 and failed["status"] == "error" and "device lost" in failed["error"]
    assert good_code == 200 and 'adaptive_requests_total{status="error"} 1' in metrics


def test_a_moe_server_degrades_to_fewer_experts_and_stays_within_them(tmp_path):
    """When the trained expert budget cannot be on time and one expert per token can, the answer
    says so (budget_experts 1) and its expert applications are within steps x tokens x 1."""
    train_tiny(tmp_path / "run", 5, config="configs/sut.py:tiny")
    moe = Engine.from_artifact(export_run(tmp_path / "run", tmp_path / "art"), buckets=(1, 4))
    controller = Controller(moe.cap, 20.0, expert_budgets=tuple(moe.expert_budgets))

    async def scenario(client, server):
        full = await (await client.post("/predict", json={"x": GOOD})).json()
        controller.service["primary", None] = ServiceTimes(moe.cap)
        controller.observe("primary", 1, 25.0)  # all experts: one step is over the SLA
        controller.service["primary", 1] = ServiceTimes(moe.cap)  # one expert: assumed instant
        return full, await (await client.post("/predict", json={"x": GOOD})).json()

    full, degraded = _with_client(moe, scenario, controller)
    assert full["status"] == "ok" and full["budget_experts"] == 2
    assert degraded["status"] == "degraded" and degraded["budget_experts"] == 1
    assert 16 <= degraded["experts"] <= degraded["steps"] * 16 * 1


def test_the_server_seeds_service_times_from_the_warm_up(engine):
    controller = Controller(engine.cap, 50.0)
    Server(engine, controller)
    seen = {(steps, rows) for steps, rows, _ in controller.service["primary", None]._seen}
    assert {rows for _, rows in seen} == set(engine.buckets) and len(seen) >= 3  # a fit, not a bound
    assert controller.decide(engine.cap, 0.0, rows=16).status in ("ok", "degraded")


def test_service_time_estimates_follow_measurements_and_batch_size():
    from adaptive.controller import ServiceTimes

    times = ServiceTimes(8, window=6)
    assert times.estimate(5) == 0.0
    times.observe(2, 4.0, rows=2)
    assert times.estimate(4, rows=2) == 8.0  # too few batches for a fit: all time per step and row
    for steps, rows in [(1, 1), (4, 1), (8, 16), (2, 8), (6, 4)]:
        times.observe(steps, 1.0 + 0.5 * steps + 0.25 * steps * rows, rows=rows)
    times.observe(3, 1.0 + 1.5 + 0.25 * 3 * 2, rows=2)  # the window forgets the first guess
    assert times.estimate(5, rows=10) == pytest.approx(1.0 + 2.5 + 12.5)  # unseen (steps, rows)
    assert times.most_steps_within(10.001, requested=8, rows=4) == 6  # 1 + 3 + 6 = 10 (and 1 + 3.5 + 7 at 7)


def test_the_running_fit_equals_a_fresh_fit_over_the_window():
    """The fit is kept as running sums over a sliding window (observations are O(1)); after many
    evictions and rebuilds of the sums it is still the least-squares fit of the window itself."""
    from adaptive.controller import ServiceTimes

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


def test_a_batch_with_a_queue_behind_it_takes_its_share_and_most_correct_answers_per_ms():
    """Primary: 1 ms + 2 ms a step; fallback 3 ms; SLA 20 ms (slack 16 ms). Alone, the request
    gets 7 steps (the most accurate that fits); with a share of 10 ms, the best point within
    it (4 steps, 0.8, beats the fallback's 0.75); with a share no point fits, the most correct
    answers per ms of what fits its own slack: the fallback (0.75 in 3 ms beats 0.95 in 15 ms
    and 0.5 in 3 ms)."""
    accuracy = {(None, s + 1): acc for s, acc in enumerate((0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96))}
    c = Controller(8, 20.0, has_fallback=True, fallback_accuracy=0.75, accuracy=accuracy)
    for steps in (1, 4, 8):
        c.observe("primary", steps, 1.0 + 2.0 * steps)
    c.observe("fallback", 1, 3.0)
    assert c.decide(8, 0.0) == Decision("degraded", "primary", 7)
    assert c.decide(8, 0.0, share_ms=10.0) == Decision("degraded", "primary", 4)
    assert c.decide(8, 0.0, share_ms=2.0) == Decision("fallback", "fallback", 1)
    assert c.decide(3, 0.0, share_ms=20.0) == Decision("ok", "primary", 3)  # what was asked fits the share
    # What the server spends on every request counts too: a fallback of 0.5 in 1 ms is 0.5
    # correct answers a ms alone, but with 20 ms a request it is 0.5 / 21, and 5 steps (0.9 in
    # 11 + 20 ms) answer more.
    weak = Controller(8, 20.0, has_fallback=True, fallback_accuracy=0.5, accuracy=accuracy)
    for steps in (1, 4, 8):
        weak.observe("primary", steps, 1.0 + 2.0 * steps)
    weak.observe("fallback", 1, 1.0)
    assert weak.decide(8, 0.0, share_ms=0.5) == Decision("fallback", "fallback", 1)
    assert weak.decide(8, 0.0, share_ms=0.5, request_ms=20.0) == Decision("degraded", "primary", 5)


def test_the_server_measures_what_a_request_costs_its_event_loop():
    from adaptive.server import RequestCost

    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    cost = RequestCost(window=10)
    assert cost.update(0) == 0.0  # the first call marks the start
    burn(0.02)
    assert cost.update(5) == 0.0  # fewer requests than a window: no estimate yet
    burn(0.02)
    assert cost.update(10) >= 40.0 / 10  # at least the 40 ms of CPU burnt, over 10 requests
    untabled = Controller(8, 20.0, has_fallback=True)
    for steps in (1, 4, 8):
        untabled.observe("primary", steps, 1.0 + 2.0 * steps)
    untabled.observe("fallback", 1, 3.5)
    assert untabled.decide(8, 0.0, share_ms=2.0) == Decision("degraded", "primary", 1)  # without a table: the quickest


def test_the_server_rejects_and_falls_back_when_the_controller_says_so(engine):
    controller = Controller(engine.cap, 20.0, has_fallback=True, fallback_cap=engine.cap)

    async def scenario(client, server):
        for name in ("primary", "fallback"):  # replace the warm-up's estimates: a hopeless machine
            controller.service[name, None] = ServiceTimes(engine.cap)
            controller.observe(name, 1, 25.0)  # one step takes longer than the SLA
        rejected = await client.post("/predict", json={"x": GOOD})
        controller.service["fallback", None] = ServiceTimes(engine.cap)  # nothing measured: assumed instant
        fallback = await client.post("/predict", json={"x": GOOD, "priority": 2})
        return rejected.status, await rejected.json(), await fallback.json()

    code, rejected, fallback = _with_client(engine, scenario, controller, fallback=engine)
    assert code == 503 and rejected["status"] == "rejected"
    assert fallback["status"] == "fallback" and fallback["model"] == "fallback"


@pytest.mark.parametrize("pattern", ["poisson", "gamma", "spike", "shift"])
def test_schedules_have_the_rate_and_shape_asked_for(pattern):
    times, hard = schedule(pattern, 200.0, 30.0, seed=1)
    assert (np.diff(times) >= 0).all() and times.max() < 30.0
    expected = 200 * 30 * (5 / 3 if pattern == "spike" else 1)
    assert len(times) == pytest.approx(expected, rel=0.1)
    if pattern == "gamma":
        gaps = np.diff(times)
        assert gaps.std() / gaps.mean() > 2.0  # bursty: CV near 3
    if pattern == "spike":
        middle = ((times >= 10) & (times < 20)).sum()
        assert middle == pytest.approx(3 * (times < 10).sum(), rel=0.15)
    assert hard.any() == (pattern == "shift") and (not hard.any() or hard[times >= 15].all())


def test_load_generator_accounts_for_every_request(engine):
    from adaptive.loadgen import run

    async def scenario(client, server):
        url = str(client.make_url("")).rstrip("/")
        times, _ = schedule("poisson", 150.0, 1.0, seed=2)
        bodies = [{"x": GOOD, "budget": 4} for _ in times] + [{"x": GOOD[:3]}]  # the last one is bad
        return await run(url, np.append(times, 0.5), bodies)

    records = _with_client(engine, scenario)
    labels = np.zeros(len(records), int)
    m = summarize(records, labels, sla_ms=1000.0, duration_s=1.0, flops={"primary": engine.table["flops"]})
    assert m["sent"] == len(records)
    assert (
        m["count_ok"] + m["count_rejected"] + m["count_deferred"] + m["count_error"] + m["count_degraded"] == m["sent"]
    )
    assert m["count_error"] == 1  # the 400 is counted as a failed request, not dropped
    assert 0 <= m["effective_accuracy"] <= m["accuracy"] <= 1 and m["p50_ms"] <= m["p99_ms"]
