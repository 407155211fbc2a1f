"""No rung of the ladder answers over a request's budget: for random budgets in every unit the
models price, random ladders (no fallback, a static fallback, a halting one) and random loads
(service times, arrival rates, queues, waits), every answer's compute, priced by the model that
ran it, is within the budget the request asked for, and /metrics' adherence says so."""

import asyncio
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive.inference.export import export_run
from adaptive.serving.engine import Engine
from adaptive.serving.launch import build_controller
from adaptive.serving.server import Pending, Server
from tests.helpers import stopped_clock, train_tiny

UNITS = ("steps", "flops", "macs")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """The primary: parity's tiny ACT model (up to 6 steps); fallbacks: a narrower static model
    of depth 2 (it cannot run fewer steps) and the primary itself (a halting fallback)."""
    root = tmp_path_factory.mktemp("adherence")
    train_tiny(root / "act", 20)
    train_tiny(root / "static", 20, overrides=("--config.halting.policy=none", "--config.model.depth=2",
                                               "--config.model.hidden=16"))  # fmt: skip
    buckets = (1, 4, 16)
    primary = Engine.from_artifact(export_run(root / "act", root / "act.art"), buckets=buckets)
    static = Engine.from_artifact(export_run(root / "static", root / "static.art"), buckets=buckets)
    return {"primary": primary, "static": static, "halting": primary}


def _spent(engine: Engine, steps: int, unit: str) -> float:
    return float(engine.compute_of(np.array([steps]), unit)[0])


requests = st.lists(
    st.tuples(
        st.sampled_from(UNITS + (None,)),  # None: no budget (the server's default)
        st.floats(0.0, 1.6),  # where the budget falls between one step and the cap (and past it)
        st.floats(0.0, 1.2),  # waited, as a share of the SLA
        st.integers(0, 9),  # priority
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ladder=st.sampled_from((None, "static", "halting")),
    tolerance=st.sampled_from((0.0, 0.005, 0.2)),
    sla_ms=st.floats(0.5, 200.0),
    slowdown=st.floats(0.01, 100.0),  # the primary's measured service times, scaled
    rate=st.floats(0.0, 1e5),
    queued=st.integers(0, 2000),
    default_steps=st.integers(1, 6),
    batch=requests,
)
def test_every_answer_is_within_its_budget(engines, ladder, tolerance, sla_ms, slowdown, rate, queued, default_steps,
                                           batch):  # fmt: skip
    primary, fallback = engines["primary"], engines.get(ladder)
    controller = build_controller(primary, fallback, sla_ms=sla_ms, mode="adaptive", max_batch=16, tolerance=tolerance)
    stopped_clock(controller)
    server = Server(primary, controller, fallback=fallback, max_batch=16, default_steps=default_steps)
    for steps, rows in ((1, 1), (6, 1), (3, 4), (6, 16)):
        controller.observe("primary", steps, slowdown * (0.2 + 0.05 * steps * rows), rows)
    server.arrivals.rate = rate  # the load the plan sees: the arrival rate and the queue behind

    asked = []
    for unit, where, _, _ in batch:
        if unit is None:
            asked.append((None, "steps"))
            continue
        table = primary.table[unit]
        asked.append((table[0] + where * (table[-1] - table[0]), unit))

    async def serve():
        loop, now = asyncio.get_running_loop(), time.perf_counter()
        server.queue = asyncio.Queue()
        for _ in range(queued):
            server.queue.put_nowait(None)
        items = [
            Pending(
                np.sign(np.random.default_rng(i).normal(size=16)).astype(np.float32),
                primary.steps_for(value, unit) if value is not None else default_steps,
                priority,
                now - waited * sla_ms / 1e3,
                loop.create_future(),
                budget_value=value,
                unit=unit,
            )
            for i, ((value, unit), (_, _, waited, priority)) in enumerate(zip(asked, batch, strict=True))
        ]
        await server._serve_batch(loop, items)
        return [item.future.result() for item in items]

    answers = asyncio.run(serve())
    for (value, unit), answer in zip(asked, answers, strict=True):
        assert answer["status"] in ("ok", "degraded", "fallback", "rejected"), answer
        if answer["status"] == "rejected":
            continue
        value, unit = (default_steps, "steps") if value is None else (value, unit)
        engine = engines[ladder] if answer["model"] == "fallback" else primary
        assert 1 <= answer["steps"] <= answer["budget_steps"], answer
        spent = _spent(engine, answer["steps"], unit)
        assert spent <= value * (1 + 1e-9), (unit, value, spent, answer)
    served = [a for a in answers if a["status"] != "rejected"]
    metrics = server.stats.prometheus(0, controller)
    assert "adaptive_budget_adherence 1.000000" in metrics, (served, metrics)
    server._pool.shutdown(wait=True)


def test_a_static_fallback_is_no_rung_below_its_depth_and_adherence_counts_what_ran(engines):
    """Under a load only the fallback can carry, a request whose budget is below the static
    fallback's two steps is rejected, not answered over it; one whose budget covers them is served."""
    primary, static = engines["primary"], engines["static"]
    controller = build_controller(primary, static, sla_ms=20.0, mode="adaptive", max_batch=16, tolerance=0.005)
    stopped_clock(controller)
    server = Server(primary, controller, fallback=static, max_batch=16)
    controller.observe("primary", 1, 1e4, 1)  # the primary cannot answer in time
    for _ in range(5):
        controller.observe("primary", 6, 1e4, 16)
        controller.observe("primary", 3, 1e4, 4)

    async def serve():
        loop, now = asyncio.get_running_loop(), time.perf_counter()
        x = np.ones(16, np.float32)
        items = [
            Pending(x, 1, 0, now, loop.create_future(), budget_value=1.0, unit="steps"),
            Pending(x, 2, 0, now, loop.create_future(), budget_value=2.0, unit="steps"),
        ]
        await server._serve_batch(loop, items)
        return [item.future.result() for item in items]

    one, two = asyncio.run(serve())
    assert one["status"] == "rejected"
    assert two["status"] == "fallback" and two["model"] == "fallback" and two["steps"] == 2
    assert "adaptive_budget_adherence 1.000000" in server.stats.prometheus(0, controller)
    # What ran is what is counted: an answer over its budget lowers adherence.
    server.stats.record("ok", 1.0, within=False)
    assert "adaptive_budget_adherence 0.500000" in server.stats.prometheus(0, controller)
    server._pool.shutdown(wait=True)
