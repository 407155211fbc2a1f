"""The budgeted server: bad requests get a 4xx and the server keeps serving, budgets are never
exceeded, the controller degrades in ladder order, the load generator accounts for every
request."""

import asyncio
import gc
import json
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adaptive.bench.loadgen import collector_paused, schedule, summarize
from adaptive.inference.export import export_run
from adaptive.serving.controller import Controller
from adaptive.serving.decisions import Request
from adaptive.serving.engine import Engine
from adaptive.serving.fallbacks import Fallback
from adaptive.serving.server import Server
from adaptive.serving.service_times import ServiceTimes
from tests.helpers import stopped_clock, train_tiny

GOOD = [1.0, 0, 0, 1, -1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    train_tiny(root / "run", 20)
    return export_run(root / "run", root / "art")


@pytest.fixture(scope="module")
def engine(artifact):
    return Engine.from_artifact(artifact, buckets=(1, 4, 16))


def test_the_serving_bench_refuses_a_fixed_budget_past_the_cap_before_starting_a_server(artifact, tmp_path):
    """Its rows would run at full depth under the name of a smaller budget."""
    from adaptive.bench import serve
    from adaptive.config import ConfigError

    with pytest.raises(ConfigError, match="--fixed-budget 99 is past the artifact's step cap 6"):
        serve.run(str(artifact), None, sla_ms=50.0, rate=None, duration=1.0, fixed_budget=99,
                  out_dir=str(tmp_path / "out"), json_out=None, tiny=True)  # fmt: skip
    assert not (tmp_path / "out").exists()


def _with_client(engine, scenario, controller=None, fallback=None):
    async def main():
        ctrl = controller or Controller(engine.cap, 1000.0, fallbacks=(Fallback(),) if fallback is not None else ())
        server = Server(engine, ctrl, fallback=fallback, max_batch=16)
        async with TestClient(TestServer(server.app())) as client:
            return await scenario(client, server)

    return asyncio.run(main())


JSON = "application/json"
HUGE = "9" * 400  # an integer literal Python reads, and float() of it overflows


def test_each_bad_request_gets_its_4xx_and_the_next_good_one_is_answered(engine, caplog):
    good_x = json.dumps(GOOD)
    bad = [  # (body, Content-Type, status, what the one-line error says)
        (b"not json", JSON, 400, "Expecting value"),
        (json.dumps([1, 2]).encode(), JSON, 400, 'with "x"'),
        (json.dumps({"y": GOOD}).encode(), JSON, 400, 'with "x"'),
        (json.dumps({"x": GOOD[:5]}).encode(), JSON, 400, "must have shape [16]; got [5]"),
        (b'{"x": null}', JSON, 400, '"x" must be an array of numbers of shape [16]; got null'),
        (json.dumps({"x": ["a"] * 16}).encode(), JSON, 400, "array of numbers"),
        (json.dumps({"x": [float("nan")] * 16}).encode(), JSON, 400, "NaN or Inf"),
        (json.dumps({"x": [1e39] + GOOD[1:]}).encode(), JSON, 400, '"x" contains a number too large for float32'),
        (json.dumps({"x": GOOD, "budget": 0}).encode(), JSON, 400, "below one step"),
        (json.dumps({"x": GOOD, "budget": "lots"}).encode(), JSON, 400, "must be a number"),
        (json.dumps({"x": GOOD, "budget": 1, "unit": "hours"}).encode(), JSON, 400, "is not one of"),
        (json.dumps({"x": GOOD, "priority": -1}).encode(), JSON, 400, "priority"),
        (b"{" + b" " * (2 << 20) + b"}", JSON, 413, "over"),
        # Each of these was a 500 with a traceback, or was accepted:
        (f'{{"x": {good_x}, "budget": {HUGE}}}'.encode(), JSON, 400, "finite number; got an integer of 400 digits"),
        (f'{{"x": [{HUGE}{", 1" * 15}]}}'.encode(), JSON, 400, "too large for float32"),
        (f'{{"x": {good_x}, "budget": {"9" * 5000}}}'.encode(), JSON, 400, "not JSON"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400, "nested too deeply"),
        (json.dumps({"x": GOOD}).encode(), "application/json; charset=bogus", 415, "charset must be utf-8"),
        (json.dumps({"x": GOOD}).encode(), "text/plain", 415, "must be application/json"),
        (json.dumps({"x": GOOD}).encode(), "application/octet-stream", 415, "must be application/json"),
        (json.dumps({"x": ["1.5"] + GOOD[1:]}).encode(), JSON, 400, "array of numbers; got str"),
        (json.dumps({"x": [True] + GOOD[1:]}).encode(), JSON, 400, "array of numbers; got bool"),
        (f'{{"x": {good_x}, "budget": NaN}}'.encode(), JSON, 400, "must be a finite number; got nan"),
        (f'{{"x": {good_x}, "budget": 1e400}}'.encode(), JSON, 400, "must be a finite number; got inf"),
        (b'{"x": "\xff"}', JSON, 400, "not UTF-8"),
        (json.dumps({"x": GOOD, "unit": "x" * 10_000}).encode(), JSON, 400, "is not one of"),
        (json.dumps({"x": GOOD, "bugdet": 1}).encode(), JSON, 400, "unknown field 'bugdet'; the fields are x, budget"),
    ]

    async def scenario(client, server):
        for body, content_type, code, message in bad:
            response = await client.post("/predict", data=body, headers={"Content-Type": content_type})
            assert response.status == code, (body[:40], await response.text())
            error = (await response.json())["error"]
            assert message in error and "\n" not in error and len(error) < 400, error
            good = await client.post("/predict", json={"x": GOOD, "budget": 3})
            assert good.status == 200 and (await good.json())["status"] == "ok"
        no_type = await client.post(
            "/predict", data=json.dumps({"x": GOOD}).encode(), skip_auto_headers=["Content-Type"]
        )
        assert no_type.status == 200  # no Content-Type is read as JSON
        health = await (await client.get("/healthz")).json()
        metrics = await (await client.get("/metrics")).text()
        return health, metrics

    with caplog.at_level("WARNING"):
        health, metrics = _with_client(engine, scenario)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback for any of them
    n = len(bad)
    assert health["status"] == "ok" and health["cap"] == 6 and health["input_shape"] == [16]
    assert f'adaptive_requests_total{{status="ok"}} {n + 1}' in metrics
    assert f"adaptive_bad_requests_total {n}" in metrics
    assert 'adaptive_bad_requests_by_code_total{code="415"} 3' in metrics
    assert 'adaptive_bad_requests_by_code_total{code="413"} 1' in metrics
    assert "adaptive_request_loop_cpu_ms " in metrics and "adaptive_arrival_rate " in metrics
    assert f'adaptive_request_latency_ms_bucket{{le="+Inf"}} {n + 1}' in metrics
    assert "adaptive_budget_adherence 1.000000" in metrics


def test_the_parsed_request_carries_its_budget_as_asked(engine):
    from adaptive.serving.http_input import parse_predict

    asked = parse_predict({"x": GOOD, "budget": 2.5, "unit": "steps"}, engine, engine.cap)
    assert (asked.budget_value, asked.unit, asked.steps) == (2.5, "steps", 2)
    default = parse_predict({"x": GOOD}, engine, engine.cap)
    assert (default.budget_value, default.unit, default.steps) == (None, "steps", engine.cap)


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


def test_a_failing_batch_is_answered_with_500_and_the_server_goes_on(engine, monkeypatch):
    run, armed = engine.run, []  # armed once the server has started (it warms its models first)

    def fails_once(*args):
        if armed == [True] and np.any(args[0]):  # a request's row, not a keep-warm run's zeros
            armed[0] = False
            raise RuntimeError("device lost")
        return run(*args)

    monkeypatch.setattr(engine, "run", fails_once)

    async def scenario(client, server):
        armed.append(True)
        failed = await client.post("/predict", json={"x": GOOD})
        good = await client.post("/predict", json={"x": GOOD})
        metrics = await (await client.get("/metrics")).text()
        return failed.status, await failed.json(), good.status, metrics

    code, failed, good_code, metrics = _with_client(engine, scenario)
    assert code == 500 and failed["status"] == "error" and "device lost" in failed["error"]
    assert good_code == 200 and 'adaptive_requests_total{status="error"} 1' in metrics


def test_a_latency_budget_is_priced_at_the_servers_own_runs_not_only_the_cost_models(engine, monkeypatch):
    """The cost model times the bare model; a served run adds the hand-off to the worker and the
    batch it shares. A budget the cost model admits and the server's runs do not is refused with
    that reason (not answered ok past it); one they admit runs at the steps they allow; and
    measurements that have not run for a second let one through, or they would refuse forever."""
    steps = np.arange(1, engine.cap + 1)
    bare = {"latency_ms": (0.01 * steps).tolist(), "latency_ms_p99": (0.01 * steps).tolist()}
    monkeypatch.setattr(engine, "table", {**engine.table, **bare})

    async def scenario(client, server):
        served = ServiceTimes(engine.cap)  # this server: 2 ms a step, whatever the batch
        for s, rows in [(s, rows) for s in range(1, engine.cap + 1) for rows in (1, 4)]:
            served.observe(s, 2.0 * s, rows, budget=s)
        server.controller.service["primary", None] = served
        stopped_clock(server.controller)

        async def ask(ms):
            answer = await client.post("/predict", json={"x": GOOD, "budget": ms, "unit": "latency_ms"})
            return answer.status, await answer.json()

        refused, within = await ask(1.0), await ask(7.0)
        unit_alone = await client.post("/predict", json={"x": GOOD, "unit": "latency_ms"})  # no budget: the default
        now = server.controller.clock()
        server.controller.clock = lambda: now + 1.5  # nothing has run for 1.5 s
        return refused, within, (unit_alone.status, await unit_alone.json()), await ask(1.0)

    (code, refused), (_, within), (alone_code, alone), (stale_code, stale) = _with_client(engine, scenario)
    assert alone_code == 200 and alone["budget_steps"] == engine.cap
    assert code == 503 and "latency budget of 1 ms is under this server's runs now: 2 ms" in refused["reason"]
    assert (within["status"], within["budget_steps"]) == ("ok", 3)  # 6 ms; 4 steps would be 8
    assert within["within_budget"] == (within["run_ms"] <= 7.0)
    assert stale_code == 200 and stale["budget_steps"] == engine.cap
    assert stale["within_budget"] == (stale["run_ms"] <= 1.0)


def test_a_moe_server_degrades_to_fewer_experts_and_stays_within_them(tmp_path):
    """When the trained expert budget cannot be on time and one expert per token can, the answer
    says so (budget_experts 1) and its expert applications are within steps x tokens x 1. A FLOPs
    budget under one step at the trained experts runs at one expert, within it."""
    train_tiny(tmp_path / "run", 5, config="configs/sut.py:tiny")
    moe = Engine.from_artifact(export_run(tmp_path / "run", tmp_path / "art"), buckets=(1, 4))
    # An SLA no run on a loaded machine misses: only the service times set below make one late.
    controller = stopped_clock(Controller(moe.cap, 2000.0, expert_budgets=tuple(moe.expert_budgets)))

    # a FLOPs budget of one step at one expert per token, under one step at the trained two
    tight = float(moe.compute_of(1, "flops", 1))
    assert tight < moe.compute_of(1, "flops")

    async def scenario(client, server):
        fewer = await client.post("/predict", json={"x": GOOD, "budget": tight, "unit": "flops"})
        below = await client.post("/predict", json={"x": GOOD, "budget": tight * 0.99, "unit": "flops"})
        fewer, below = (fewer.status, await fewer.json()), (below.status, await below.json())
        full = await (await client.post("/predict", json={"x": GOOD})).json()
        controller.service["primary", None] = ServiceTimes(moe.cap)
        controller.observe("primary", 1, 2500.0)  # all experts: one step is over the SLA
        controller.service["primary", 1] = ServiceTimes(moe.cap)  # one expert: assumed instant
        return fewer, below, full, await (await client.post("/predict", json={"x": GOOD})).json()

    fewer, below, full, degraded = _with_client(moe, scenario, controller)
    assert fewer[0] == 200 and fewer[1]["status"] == "ok" and fewer[1]["budget_experts"] == 1, fewer
    assert moe.compute_of(fewer[1]["steps"], "flops", 1) <= tight
    assert below[0] == 400 and "below one step" in below[1]["error"], below
    assert full["status"] == "ok" and full["budget_experts"] == 2
    assert degraded["status"] == "degraded" and degraded["budget_experts"] == 1
    assert 16 <= degraded["experts"] <= degraded["steps"] * 16 * 1

    async def shed(client, server):  # shedding runs the experts as trained: the 400 says so
        answer = await client.post("/predict", json={"x": GOOD, "budget": tight, "unit": "flops"})
        return answer.status, (await answer.json())["error"]

    shedding = Controller(moe.cap, 20.0, mode="shed", expert_budgets=tuple(moe.expert_budgets))
    status, error = _with_client(moe, shed, shedding)
    assert status == 400 and "below one step of this model" in error
    assert error.endswith(" at its 2 experts per token (the shed policy runs no fewer)"), error


def test_the_server_seeds_service_times_from_the_warm_up(engine):
    controller = Controller(engine.cap, 50.0)
    Server(engine, controller)
    seen = {(steps, rows) for steps, rows, _ in controller.service["primary", None]._seen}
    assert {rows for _, rows in seen} == set(engine.buckets) and len(seen) >= 3  # a fit, not a bound
    assert controller.plan([Request(engine.cap, 0.0)] * 16)[0].status in ("ok", "degraded")


def test_what_the_server_starts_with_is_out_of_the_collectors_sight_while_it_serves(engine):
    async def scenario(client, server):
        answer = await client.post("/predict", json={"x": GOOD})
        return answer.status, gc.get_freeze_count()

    status, frozen = _with_client(engine, scenario)
    assert status == 200 and frozen > 1000  # JAX, the executables, the tables: frozen at start-up
    assert gc.get_freeze_count() == 0  # and given back to the collector when the server stops


def test_the_load_generator_pauses_its_collector_and_restores_it():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("a failed run")
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    with collector_paused():
        pass
    assert not gc.isenabled()
    gc.enable()


def test_the_server_measures_what_a_request_costs_its_event_loop():
    from adaptive.serving.server import RequestCost

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


def test_the_server_follows_the_arrival_rate_within_a_tenth_of_a_second():
    from adaptive.serving.server import ArrivalRate

    rate, received = ArrivalRate(tau_s=0.1), 0
    assert rate.update(0.0, 0) == 0.0  # the first call marks the start
    for tick in range(1, 101):  # 1000 requests/s for a second, seen every 10 ms
        received += 10
        rate.update(tick / 100, received)
    assert rate.rate == pytest.approx(1000.0, rel=0.01)
    for tick in range(101, 111):  # then 3000/s for 0.1 s: most of the way there
        received += 30
        rate.update(tick / 100, received)
    assert 1000.0 + 0.6 * 2000.0 < rate.rate < 3000.0
    assert rate.update(1.1, received) == rate.rate  # no time passed: unchanged


def test_the_server_rejects_and_falls_back_when_the_controller_says_so(engine):
    controller = stopped_clock(Controller(engine.cap, 20.0, fallbacks=(Fallback(cap=engine.cap),)))

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
    deadline = "no model here answers it within its deadline (16 ms from arrival: 0.8 x the 20 ms SLA)"
    assert rejected["reason"].startswith(deadline)
    assert fallback["status"] == "fallback" and fallback["model"] == "fallback"


def test_a_budget_below_a_static_model_is_a_400_unless_a_fallback_runs_within_it(engine, tmp_path):
    """A static model runs all its steps: a smaller budget can never be kept by it, so the client
    hears why (400), not "busy, retry" (503); with an adaptive fallback the budget is answered,
    and no plan runs the static model past a budget, whatever the controller knows."""
    from adaptive.bench import serve
    from adaptive.cli.main import main
    from adaptive.config import ConfigError
    from adaptive.serving.launch import build_controller

    train_tiny(tmp_path / "static", 2, overrides=("--config.halting.policy=none", "--config.model.depth=3"))
    static = Engine.from_artifact(export_run(tmp_path / "static", tmp_path / "art"), buckets=(1,))
    # a default budget it can never keep is refused at start (every request without one would be)
    assert main(["serve", "--artifact", str(tmp_path / "art"), "--default-budget", "2", "--port", "0"]) == 2
    with pytest.raises(ConfigError, match="--fixed-budget 2 is below the static artifact's 3 steps"):
        serve.run(str(tmp_path / "art"), None, sla_ms=50.0, rate=None, duration=1.0, fixed_budget=2,
                  out_dir=str(tmp_path / "out"), json_out=None, tiny=True)  # fmt: skip

    async def scenario(client, server):
        answers = []
        for budget in (2, 3):
            response = await client.post("/predict", json={"x": GOOD, "budget": budget})
            answers.append((response.status, await response.json()))
        return answers

    (low_code, low), (full_code, full) = _with_client(static, scenario)
    assert (
        low_code == 400 and "budget 2 steps allows 2 of this static model's 3 steps, and it runs all" in low["error"]
    ), low
    assert full_code == 200 and full["steps"] == full["budget_steps"] == 3
    ladder = build_controller(static, engine, sla_ms=1000.0, mode="adaptive", max_batch=16, tolerance=0.0)
    (low_code, low), _ = _with_client(static, scenario, ladder, fallback=engine)
    assert low_code == 200 and low["model"] == "fallback" and low["steps"] <= low["budget_steps"] <= 2
    # a controller without the accuracy table would plan the static model at 2 steps: refused
    (low_code, low), _ = _with_client(static, scenario, fallback=engine)
    assert low_code == 503 and low["status"] == "rejected"
    assert low["reason"] == "primary is static: it would run all its steps, past the budget"
    static_policy = Controller(static.cap, 1000.0, mode="static", fallbacks=(Fallback(),))
    (low_code, low), _ = _with_client(static, scenario, static_policy, fallback=engine)
    assert low_code == 400  # the static policy never falls back: nothing here keeps the budget


def test_a_server_and_its_controller_must_name_the_same_fallbacks(engine):
    with pytest.raises(ValueError, match="not the controller's"):
        Server(engine, Controller(engine.cap, 20.0), fallback=engine)
    with pytest.raises(ValueError, match="same order"):
        rungs = (Fallback("a"), Fallback("b"))
        Server(engine, Controller(engine.cap, 20.0, fallbacks=rungs), fallback={"b": engine, "a": engine})


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
    from adaptive.bench.loadgen import run

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


def test_a_shedding_server_rejects_on_arrival_what_the_controller_sheds_and_counts_it(engine, monkeypatch):
    controller = Controller(engine.cap, 20.0, mode="shed")

    async def scenario(client, server):
        answered = await client.post("/predict", json={"x": GOOD, "budget": 2})
        asked = []
        monkeypatch.setattr(controller, "sheds", lambda queued, steps: asked.append((queued, steps)) or True)
        shed = await client.post("/predict", json={"x": GOOD, "budget": 2})
        metrics = await (await client.get("/metrics")).text()
        return await answered.json(), shed.status, await shed.json(), asked, metrics

    answered, code, shed, asked, metrics = _with_client(engine, scenario, controller)
    assert answered["status"] == "ok" and answered["budget_steps"] == 2  # nothing ahead of it: served
    assert asked == [(0, 2)]  # the queue ahead of it and the step budget it asked for
    assert code == 503 and shed["status"] == "rejected" and shed["latency_ms"] < 20.0
    assert shed["reason"].startswith("shed on arrival: behind 0 queued"), shed  # the queue it was asked about
    assert 'adaptive_requests_total{status="rejected"} 1' in metrics


def test_a_server_whose_estimates_say_nothing_is_on_time_still_answers_once_idle(engine):
    """One run slowed by a pause of the machine makes every step look over the SLA; the server
    must not reject every request from then on. Once the primary has been idle a horizon, the
    freshest request runs (degraded, at the quickest point), and its run is measured."""
    controller = Controller(engine.cap, 20.0)  # a horizon of 16 ms

    async def scenario(client, server):
        controller.observe("primary", engine.cap, 1e5, rows=16)  # a paused run: 100 s
        now = await client.post("/predict", json={"x": GOOD})  # it has just run: the estimate stands
        answers = []
        for _ in range(3):
            await asyncio.sleep(0.05)  # idle past the horizon
            answer = await client.post("/predict", json={"x": GOOD})
            answers.append((answer.status, await answer.json()))
        return now.status, answers, await (await client.get("/metrics")).text()

    now, answers, metrics = _with_client(engine, scenario, controller)
    assert now == 503
    assert all(status == 200 and a["model"] == "primary" and a["budget_steps"] == 1 for status, a in answers), answers
    assert 'adaptive_requests_total{status="rejected"} 1' in metrics
