"""`adaptive serve --artifact ART [--fallback ART2] --sla-ms 20 --port P`: a budgeted HTTP server.

aiohttp on loopback by default. POST /predict takes one example:

    {"x": [...], "budget": 8, "unit": "steps", "priority": 0}     (budget, unit, priority optional)

and answers {"prediction", "confidence", "steps", "experts", "budget_steps", "budget_experts",
"latency_ms", "status", "model"} (`experts`: expert applications in all, over tokens and steps;
`budget_experts`: the experts per token it ran at; `budget_steps`: the step cap it ran under,
which may be below the budget asked for with status ok when a cheaper point is as accurate):
status ok / degraded / fallback with HTTP 200, rejected / deferred with 503 (deferred carries
retry_after_ms), error with 500 if a batch fails (its requests are answered; the server goes
on). Bad requests (not JSON, missing or wrong-shaped x, NaN, a budget out of range, an unknown
unit, a body over 1 MiB) get a 4xx with {"error": one line}, and the server keeps serving.
GET /healthz says what is loaded; GET /metrics is Prometheus text.

One batcher task drains the queue: it takes what has arrived (up to --max-batch), asks the
controller for the batch's plan (each request's operating point, within its deadline and the
batch's share of the server's time at the measured arrival rate), answers the rejected at once,
runs the fallback's share and then the primary's, grouped by step budget, on a worker thread
(the event loop keeps accepting requests meanwhile), and answers each group as soon as it is
done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import uvloop
from aiohttp import web

from adaptive.accuracy_table import AccuracyTable, accuracy_lookup
from adaptive.controller import STATUSES, Controller, Decision, Request
from adaptive.engine import BudgetError, Engine

MAX_BODY = 1 << 20
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


@dataclass
class Pending:
    x: np.ndarray
    steps: int
    priority: int
    arrival: float
    future: asyncio.Future = field(repr=False)


class Stats:
    """Counters for /metrics."""

    def __init__(self):
        self.by_status = dict.fromkeys((*STATUSES, "error"), 0)
        self.bad_requests = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.latency_sum_ms = 0.0
        self.within_budget = 0
        self.answered = 0

    def record(self, status: str, latency_ms: float | None = None, within: bool = True) -> None:
        self.by_status[status] += 1
        if latency_ms is not None:
            self.latency_counts[int(np.searchsorted(LATENCY_BUCKETS_MS, latency_ms))] += 1
            self.latency_sum_ms += latency_ms
            self.answered += 1
            self.within_budget += int(within)

    def prometheus(self, queue: int, controller: Controller) -> str:
        lines = ["# TYPE adaptive_requests_total counter"]
        lines += [f'adaptive_requests_total{{status="{s}"}} {n}' for s, n in self.by_status.items()]
        lines += ["# TYPE adaptive_bad_requests_total counter", f"adaptive_bad_requests_total {self.bad_requests}"]
        lines += ["# TYPE adaptive_request_latency_ms histogram"]
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), self.latency_counts, strict=True):
            running += count
            lines.append(f'adaptive_request_latency_ms_bucket{{le="{bound}"}} {running}')
        lines += [
            f"adaptive_request_latency_ms_sum {self.latency_sum_ms:.3f}",
            f"adaptive_request_latency_ms_count {running}",
        ]
        adherence = self.within_budget / self.answered if self.answered else 1.0
        lines += ["# TYPE adaptive_budget_adherence gauge", f"adaptive_budget_adherence {adherence:.6f}"]
        lines += ["# TYPE adaptive_queue_length gauge", f"adaptive_queue_length {queue}"]
        lines += ["# TYPE adaptive_step_cap gauge", f"adaptive_step_cap {controller.cap:g}"]
        return "\n".join(lines) + "\n"


class RequestCost:
    """CPU time the event loop spends per request received (HTTP, JSON, validation, planning):
    the server's cost of a request whatever model answers it, shown in /metrics: on a machine
    whose cores the model runs share, what bounds the rate even the cheapest model serves.
    `time.thread_time` on the loop thread, over windows of at least 64 requests, smoothed."""

    def __init__(self, window: int = 64):
        self.window, self.ms = window, 0.0
        self._mark: tuple[float, int] | None = None

    def update(self, received: int) -> float:
        """Called on the loop thread with the count of requests received so far; the estimate."""
        now = time.thread_time()
        if self._mark is None:
            self._mark = (now, received)
        elif received - self._mark[1] >= self.window:
            per = 1e3 * (now - self._mark[0]) / (received - self._mark[1])
            self.ms = per if self.ms == 0.0 else 0.8 * self.ms + 0.2 * per
            self._mark = (now, received)
        return self.ms


class ArrivalRate:
    """Requests per second arriving now: an exponentially weighted rate with time constant
    `tau_s` (0.1 s: a 3x spike is 63% seen within 0.1 s; the queue it builds meanwhile counts
    in `Controller.batch_time_ms` at once)."""

    def __init__(self, tau_s: float = 0.1):
        self.tau_s, self.rate = tau_s, 0.0
        self._mark: tuple[float, int] | None = None

    def update(self, now: float, received: int) -> float:
        """`received`: requests received so far, at perf_counter time `now`; the estimate."""
        if self._mark is not None and now > self._mark[0]:
            elapsed = now - self._mark[0]
            weight = 1.0 - np.exp(-elapsed / self.tau_s)
            self.rate += weight * ((received - self._mark[1]) / elapsed - self.rate)
        self._mark = (now, received)
        return self.rate


class Server:
    def __init__(
        self,
        primary: Engine,
        controller: Controller,
        *,
        fallback: Engine | None = None,
        max_batch: int = 32,
        default_steps: int | None = None,
    ):
        self.engines = {"primary": primary, "fallback": fallback}
        self.default_steps = default_steps or primary.cap  # for requests that name no budget
        # The warm-up runs seed the controller's service times over batch sizes: without them,
        # its first estimates come from lone requests and overstate full batches (measured: a
        # controller that had seen only batches of 1 rejected load a static server took 38x of).
        for name, engine in self.engines.items():
            for experts, steps, rows, ms in engine.warmup if engine else ():
                if name == "primary" or experts is None:
                    controller.observe(name, steps, ms, rows, experts)
        self.controller, self.max_batch = controller, max_batch
        # The experts per token each model runs at when not degraded (None without experts).
        self._trained_k = {
            name: (engine.meta.get("caps", {}).get("experts_per_token") if engine else None)
            for name, engine in self.engines.items()
        }
        self.stats = Stats()
        self.request_cost, self.arrivals, self._received = RequestCost(), ArrivalRate(), 0
        self.queue: asyncio.Queue[Pending] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1)  # one model run at a time: no oversubscription

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/predict", self.predict)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        # What exists now (JAX, the warm executables, the tables) lives as long as the server:
        # frozen, out of the collector's sight, a full collection walks only what serving made
        # since. Measured on parity's spike (experiments/serving): a full collection over it all
        # stopped the event loop for 72 ms, and 57 answers were late.
        gc.freeze()
        self.queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batches())

    async def _stop(self, app) -> None:
        self._batcher.cancel()
        self._pool.shutdown(wait=False)
        gc.unfreeze()

    # -- handlers --------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        arrival = time.perf_counter()
        self._received += 1
        try:
            body = await request.json()
            x, steps, priority = self._parse(body)
        except web.HTTPRequestEntityTooLarge:
            self.stats.bad_requests += 1
            return web.json_response({"error": f"request body over {MAX_BODY} bytes"}, status=413)
        except (ValueError, BudgetError, TypeError) as e:
            self.stats.bad_requests += 1
            return web.json_response({"error": str(e).splitlines()[0]}, status=400)
        if not self.controller.admit(self.queue.qsize()):
            self.stats.record("deferred")
            retry = round(self.controller.sla_ms, 1)
            return web.json_response({"status": "deferred", "retry_after_ms": retry}, status=503)
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(x, steps, priority, arrival, future))
        answer = await future
        code = {"rejected": 503, "error": 500}.get(answer["status"], 200)
        return web.json_response(answer, status=code)

    def _parse(self, body) -> tuple[np.ndarray, int, int]:
        primary = self.engines["primary"]
        if not isinstance(body, dict) or "x" not in body:
            raise ValueError('the body must be a JSON object with "x" (one example)')
        try:
            x = np.asarray(body["x"], dtype=np.float32)
        except (ValueError, TypeError):
            raise ValueError('"x" must be an array of numbers') from None
        if x.shape != primary.input_shape:
            raise ValueError(f'"x" must have shape {list(primary.input_shape)}; got {list(x.shape)}')
        if not np.isfinite(x).all():
            raise ValueError('"x" contains NaN or Inf')
        unit = body.get("unit", "steps")
        if not isinstance(unit, str):
            raise ValueError('"unit" must be a string')
        budget = body.get("budget")
        if budget is None:
            steps = self.default_steps
        elif isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f'"budget" must be a number; got {budget!r}')
        else:
            steps = primary.steps_for(float(budget), unit)
        priority = body.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ValueError(f'"priority" must be an integer in [0, 9]; got {priority!r}')
        return x, steps, priority

    async def healthz(self, request: web.Request) -> web.Response:
        p, f = self.engines["primary"], self.engines["fallback"]
        return web.json_response(
            {
                "status": "ok",
                "primary": p.name,
                "fallback": f.name if f else None,
                "input_shape": list(p.input_shape),
                "cap": p.cap,
                "mode": self.controller.mode,
                "sla_ms": self.controller.sla_ms,
                "queue": self.queue.qsize() if self.queue else 0,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.stats.prometheus(self.queue.qsize() if self.queue else 0, self.controller)
        text += f"# TYPE adaptive_request_loop_cpu_ms gauge\nadaptive_request_loop_cpu_ms {self.request_cost.ms:.4f}\n"
        text += f"# TYPE adaptive_arrival_rate gauge\nadaptive_arrival_rate {self.arrivals.rate:.2f}\n"
        return web.Response(text=text, content_type="text/plain")

    # -- batching ----------------------------------------------------------------------------

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._serve_batch(loop, batch)
            except Exception as e:  # a failed batch answers its requests (500); the batcher lives on
                logging.getLogger(__name__).exception("batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        self.stats.record("error")
                        item.future.set_result({"status": "error", "error": f"{e.__class__.__name__}: {e}"[:200]})

    def _plan(self, items: list[Pending]) -> list[tuple[Pending, Decision]]:
        """Each request's operating point for a batch of these items about to run now; the
        rejected are answered at once and left out."""
        now = time.perf_counter()
        self.request_cost.update(self._received)
        rate = self.arrivals.update(now, self._received)
        behind = self.queue.qsize() if self.queue else 0
        time_ms = self.controller.batch_time_ms(len(items), rate, behind)
        requests = [Request(item.steps, 1e3 * (now - item.arrival), item.priority) for item in items]
        kept = []
        for item, d in zip(items, self.controller.plan(requests, time_ms), strict=True):
            if d.model is None:
                self.stats.record("rejected")
                item.future.set_result({"status": "rejected", "latency_ms": 1e3 * (now - item.arrival)})
            else:
                kept.append((item, d))
        return kept

    async def _serve_batch(self, loop, batch: list[Pending]) -> None:
        """The fallback's share first (it is quick, and the plan gave it the rows with the least
        slack), then the primary's in groups of similar step budgets, tightest first, each
        answered as soon as it is done."""
        planned = self._plan(batch)
        await self._run(loop, "fallback", [(item, d) for item, d in planned if d.model == "fallback"])
        engine = self.engines["primary"]
        for experts in reversed(self.controller.expert_budgets):  # one expert budget a run
            primary = [(item, d) for item, d in planned if d.model == "primary" and d.experts == experts]
            for part in engine.groups(np.array([d.steps for _, d in primary], np.int32)) if primary else []:
                await self._run(loop, "primary", [primary[i] for i in part])

    async def _run(self, loop, name: str, group: list[tuple[Pending, Decision]]) -> None:
        if not group:
            return
        x = np.stack([item.x for item, _ in group])
        steps = np.array([d.steps for _, d in group], np.int32)
        experts = group[0][1].experts  # one expert budget per run (grouped by the caller)
        start = time.perf_counter()
        result = await loop.run_in_executor(self._pool, self.engines[name].run, x, steps, experts)
        self._answer(name, group, result, start, experts)

    def _answer(self, name: str, members: list, result, start: float, experts: int | None) -> None:
        ms = 1e3 * (time.perf_counter() - start)
        least = min(d.steps for _, d in members)
        self.controller.observe(name, int(result.steps.max()), ms, len(members), experts, budget=least)
        for i, (item, d) in enumerate(members):
            latency = 1e3 * (float(result.done_s[i]) - item.arrival)
            within = int(result.steps[i]) <= d.steps
            self.stats.record(d.status, latency, within)
            item.future.set_result(
                {
                    "prediction": int(result.prediction[i]),
                    "confidence": float(result.confidence[i]),
                    "steps": int(result.steps[i]),
                    "experts": int(result.experts[i]),
                    "budget_steps": int(d.steps),
                    "budget_experts": d.experts if d.experts is not None else self._trained_k[name],
                    "latency_ms": latency,
                    "status": d.status,
                    "model": name,
                }
            )


def _fallback_accuracy(primary: Engine, backup: Engine | None) -> float | None:
    """The fallback's validation accuracy at its cap, if both tables score the same split of the
    same data (else the two are not comparable, and the ladder's order decides)."""
    if backup is None:
        return None
    tables = [engine.meta.get("accuracy_at_budgets") or {} for engine in (primary, backup)]
    data = [engine.meta.get("config", {}).get("data") for engine in (primary, backup)]
    same = tables[0].get("split") == tables[1].get("split") and tables[0].get("examples") == tables[1].get("examples")
    if not (same and data[0] == data[1] and tables[0]):
        return None
    return accuracy_lookup(backup.meta).get((None, backup.cap))


def serve(
    artifact: str,
    *,
    fallback: str | None,
    sla_ms: float,
    host: str,
    port: int,
    mode: str,
    max_batch: int,
    default_steps: int | None,
    tolerance: float = 0.005,
):
    buckets = tuple(b for b in (1, 4, 16, 64) if b < max_batch) + (max_batch,)
    primary = Engine.from_artifact(artifact, buckets=buckets)
    backup = Engine.from_artifact(fallback, buckets=buckets, expert_budgets=False) if fallback else None
    controller = Controller(
        primary.cap,
        sla_ms,
        mode=mode,
        has_fallback=backup is not None,
        fallback_cap=backup.cap if backup else 1,
        expert_budgets=tuple(primary.expert_budgets),
        accuracy=AccuracyTable.from_meta(primary.meta),
        fallback_accuracy=_fallback_accuracy(primary, backup),
        tolerance=tolerance,
        max_batch=max_batch,
        groups=primary.groups,
    )
    server = Server(primary, controller, fallback=backup, max_batch=max_batch, default_steps=default_steps)
    print(f"serving {artifact} on http://{host}:{port} (SLA {sla_ms:g} ms, {mode}); executables warm", flush=True)
    # uvloop: the event loop is what a request costs the server whatever model answers it
    # (HTTP, JSON, decisions), and uvloop's is the cheaper one (measured: adaptive bench serve).
    web.run_app(server.app(), host=host, port=port, print=None, access_log=None, loop=uvloop.new_event_loop())
