"""`adaptive serve --artifact ART [--fallback ART2] --sla-ms 20 --port P`: a budgeted HTTP server.

aiohttp on loopback by default. POST /predict takes one example:

    {"x": [...], "budget": 8, "unit": "steps", "priority": 0}     (budget, unit, priority optional)

and answers {"prediction", "confidence", "steps", "experts", "budget_steps", "budget_experts",
"latency_ms", "run_ms", "within_budget", "status", "model"} (`experts`: expert applications in
all, over tokens and steps; `within_budget`: the run kept the budget asked for, in its unit;
`budget_experts`: the experts per token it ran at; `budget_steps`: the step cap it ran under,
which may be below the budget asked for with status ok when a cheaper point is as accurate):
status ok / degraded / fallback with HTTP 200, rejected / deferred with 503 (deferred carries
retry_after_ms), error with 500 if a batch fails (its requests are answered; the server goes
on), not_finite with 422 where the model's output overflows for a finite input. Bad requests
(see adaptive/serving/http_input.py: not UTF-8 JSON, missing or wrong-shaped x, NaN, a
budget out of range, an unknown unit or field, a body over 1 MiB or late, a Content-Type other than JSON)
get a 4xx with {"error": one line}, counted in /metrics, and the server keeps serving.
GET /healthz says what is loaded; GET /metrics is Prometheus text; GET /openapi.json is the
OpenAPI document of all this. Past --max-connections open connections, new ones get a 503 and
are closed (adaptive/serving/connections.py); connections idle or stuck in their headers for
--idle-timeout-s are closed.

Under `--policy shed` a request that cannot finish within its deadline behind the queue ahead
of it is rejected on arrival (`Controller.sheds`).

One batcher task drains the queue: it takes what has arrived (up to --max-batch), asks the
controller for the batch's plan (each request's operating point, within its deadline and the
batch's share of the server's time at the measured arrival rate), answers the rejected at once,
runs the fallback's share and then the primary's, grouped by step budget, on a worker thread
(the event loop keeps accepting requests meanwhile), and answers each group as soon as it is
done; idle for `KEEP_WARM_S`, it runs each model once to keep it warm. A latency budget is
priced at the server's own runs as well as the cost model's (adaptive/serving/pending.py).
`launch.serve` loads the artifacts, builds the controller and runs the server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aiohttp import web

from adaptive.serving.answerable import check_answerable
from adaptive.serving.connections import ConnectionLimit, deferred, listen, refuse, routing_errors
from adaptive.serving.controller import Controller
from adaptive.serving.decisions import REJECTED, Decision
from adaptive.serving.engine import Engine, fallback_engines
from adaptive.serving.http_input import (
    BadRequest,
    check_content_type,
    check_no_query,
    parse_json,
    parse_predict,
    read_body,
)
from adaptive.serving.openapi import document
from adaptive.serving.pending import Pending, asked, to_request, too_quick
from adaptive.serving.server_stats import ArrivalRate, RequestCost, Stats

__all__ = ["ArrivalRate", "Pending", "RequestCost", "Server"]

MAX_BODY = 1 << 20
log = logging.getLogger(__name__)
KEEP_WARM_S = 0.05  # idle this long, the batcher runs each model once to keep it warm


class Server:
    def __init__(
        self,
        primary: Engine,
        controller: Controller,
        *,
        fallback: Engine | dict[str, Engine] | None = None,
        max_batch: int = 32,
        default_steps: int | None = None,
        read_timeout_s: float = 5.0,
        max_connections: int = 1000,
        idle_timeout_s: float = 60.0,
    ):
        """`fallback`: the ladder's fallback rungs, {name: engine} (one engine: the rung
        "fallback"), named as the controller's; `read_timeout_s`: how long a request's body may
        take to arrive after its headers (408 after); `max_connections`: open at once (503 past
        it); `idle_timeout_s`: how long a connection may sit without a whole request's headers
        (between keep-alive requests or stuck in them) before it is closed."""
        if not (read_timeout_s > 0 and idle_timeout_s > 0 and max_connections >= 1 and max_batch >= 1):
            raise ValueError("read_timeout_s and idle_timeout_s must be > 0, max_connections and max_batch >= 1")
        self.read_timeout_s, self.idle_timeout_s, self.max_connections = read_timeout_s, idle_timeout_s, max_connections
        self._stopping = asyncio.Event()  # set by stop(): a body still arriving is not waited for
        self.connections: ConnectionLimit | None = None  # set by start(); TestServer runs without
        self.fallbacks = fallback_engines(fallback)
        if list(self.fallbacks) != [f.name for f in controller.fallbacks]:
            raise ValueError(
                f"the server's fallbacks {list(self.fallbacks)} are not the controller's "
                f"{[f.name for f in controller.fallbacks]} (same names, same order)"
            )
        self.engines = {"primary": primary, **self.fallbacks}
        self.default_steps = default_steps or primary.cap  # for requests that name no budget
        # The warm-up runs seed the controller's service times over batch sizes: without them,
        # its first estimates come from lone requests and overstate full batches, and it
        # rejects load a static server would take.
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
        # The arrival rate steers how long a batch may run: only requests that reach the queue
        # count, or a flood of malformed (or deferred, or shed) ones would degrade the good ones.
        self._queued = 0
        self.queue: asyncio.Queue[Pending] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1)  # one model run at a time: no oversubscription
        self._openapi = json.dumps(document(primary.input_shape, primary.units, primary.cap, MAX_BODY))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[routing_errors(self.stats.bad)])
        app.router.add_post("/predict", self.predict)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        # What exists now (JAX, the warm executables, the tables) lives as long as the server:
        # frozen, out of the collector's sight, a full collection walks only what serving made
        # since: a full collection over it all stops the event loop long enough to make answers
        # late.
        gc.freeze()
        await self._warm_worker()
        self.queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batches())

    async def _warm_worker(self) -> None:
        """Each model's first run on the worker (its thread started, its outputs first read back)
        is far slower than the rest: run before serving, untimed; then one at its full depth,
        timed as the batches are, so the service times hold a served run and not only the
        engines' bare warm-up (a latency budget is priced at what served runs take, `to_request`)."""
        loop = asyncio.get_running_loop()
        await self._keep_warm(loop)
        for name, engine in self.engines.items():
            if engine is None:
                continue
            x = np.zeros((1, *engine.input_shape), np.float32)
            start = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._pool, engine.run, x, np.full(1, engine.cap, np.int32))
            except Exception:  # a model that cannot run fails its batches, which say so
                continue
            ms, run_ms = 1e3 * (time.perf_counter() - start), 1e3 * (float(result.done_s.max()) - start)
            # No budget: how deep zeros go says nothing of how deep requests go.
            self.controller.observe(name, int(result.steps.max()), ms, 1, run_ms=run_ms)

    async def _keep_warm(self, loop) -> None:
        """One row of one step through each model unless a request is waiting: after an idle
        moment a first run is several times slower than the next (caches and the runtime's
        threads gone cold), and a latency budget priced at the tail of the runs would pay for it.
        Kept out of the service times (they would fill their window with one-step runs), its
        time tells an idle controller what a lone step takes now (`Controller.observe_idle`)."""
        for name, engine in self.engines.items():
            if engine is None or (self.queue is not None and not self.queue.empty()):
                continue
            x = np.zeros((1, *engine.input_shape), np.float32)
            start = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._pool, engine.run, x, np.ones(1, np.int32))
            except Exception:  # a model that cannot run fails its batches, which say so
                log.debug("keep-warm run failed", exc_info=True)
                continue
            if not engine.fixed_depth:  # a static model ran all its steps, not one
                self.controller.observe_idle(name, 1e3 * (float(result.done_s.max()) - start))

    async def _stop(self, app) -> None:
        self._batcher.cancel()
        self._pool.shutdown(wait=False)
        gc.unfreeze()

    # -- handlers --------------------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        self._received += 1
        try:
            check_no_query(request)
            check_content_type(request.headers.get("Content-Type"))
            raw = await read_body(request, MAX_BODY, self.read_timeout_s, self._stopping)
            parsed = parse_predict(parse_json(raw), self.engines["primary"], self.default_steps)
            self._check_answerable(parsed)
        except BadRequest as e:
            return await self._refuse(request, e)
        except ConnectionError:  # aiohttp would log a traceback; nobody is there to answer
            self.stats.dropped += 1
            log.warning("%s dropped the connection before its request body arrived", request.remote)
            return web.Response(status=400)
        if not self.controller.admit(self.queue.qsize()):
            self.stats.record("deferred")
            return deferred(self.controller.sla_ms)
        if self.controller.sheds(self.queue.qsize(), parsed.steps):  # cannot be on time: now, not later
            self.stats.record("rejected")
            latency = 1e3 * (time.perf_counter() - arrival)
            reason = f"shed on arrival: behind {self.queue.qsize()} queued it would finish past its deadline"
            return web.json_response({"status": "rejected", "latency_ms": latency, "reason": reason}, status=503)
        future = asyncio.get_running_loop().create_future()
        pending = Pending(
            parsed.x,
            parsed.steps,
            parsed.priority,
            arrival,
            future,
            parsed.budget_value,
            parsed.unit,
            parsed.expert_steps,
        )
        self._queued += 1
        await self.queue.put(pending)
        answer = await future
        code = {"rejected": 503, "error": 500, "not_finite": 422}.get(answer["status"], 200)
        return web.json_response(answer, status=code)

    def _check_answerable(self, parsed) -> None:
        rungs = self.fallbacks if self.controller.mode == "adaptive" else {}  # the others never fall back
        check_answerable(parsed, self.engines["primary"], rungs, self.controller.mode)

    async def _refuse(self, request: web.Request, e: BadRequest) -> web.StreamResponse:
        return await refuse(request, e, self.stats.bad)

    async def healthz(self, request: web.Request) -> web.Response:
        p, rungs = self.engines["primary"], [engine.name for engine in self.fallbacks.values()]
        return web.json_response(
            {
                "status": "ok",
                "primary": p.name,
                "fallback": rungs[0] if rungs else None,
                "fallbacks": dict(zip(self.fallbacks, rungs, strict=True)),
                "input_shape": list(p.input_shape),
                "cap": p.cap,
                "mode": self.controller.mode,
                "sla_ms": self.controller.sla_ms,
                "queue": self.queue.qsize() if self.queue else 0,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.stats.prometheus(self.queue.qsize() if self.queue else 0, self.controller, self.connections)
        text += f"# TYPE adaptive_request_loop_cpu_ms gauge\nadaptive_request_loop_cpu_ms {self.request_cost.ms:.4f}\n"
        text += f"# TYPE adaptive_arrival_rate gauge\nadaptive_arrival_rate {self.arrivals.rate:.2f}\n"
        return web.Response(text=text, content_type="text/plain")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type="application/json")

    # -- listening ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Starts the app and listens on host:port behind the connection limit; the port bound
        (port 0: a free one). A port that cannot be bound is a ConfigError naming it."""
        self._runner, self._listener, self.connections = await listen(
            self.app(), host, port, max_connections=self.max_connections, idle_timeout_s=self.idle_timeout_s
        )
        return self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stops listening, closes the open connections, stops the app (started by `start`)."""
        self._stopping.set()  # bodies still arriving are answered 503 rather than waited for
        self._listener.close()
        await self._runner.cleanup()

    # -- batching ----------------------------------------------------------------------------

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.queue.empty():
                try:  # an idle server keeps its models warm (`_keep_warm`)
                    batch = [await asyncio.wait_for(self.queue.get(), KEEP_WARM_S)]
                except TimeoutError:
                    await self._keep_warm(loop)
                    continue
            else:
                batch = [self.queue.get_nowait()]
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
        rate = self.arrivals.update(now, self._queued)
        behind = self.queue.qsize() if self.queue else 0
        time_ms = self.controller.batch_time_ms(len(items), rate, behind)
        known = self.controller, self.engines, self.default_steps
        requests = [to_request(item, 1e3 * (now - item.arrival), len(items), *known) for item in items]
        kept = []
        for item, r, d in zip(items, requests, self.controller.plan(requests, time_ms), strict=True):
            reason = d.reason or too_quick(item, r, len(items), *known) or self._late_reason
            if d.model is not None and self._runs_past(d):
                d, reason = REJECTED, f"{d.model} is static: it would run all its steps, past the budget"
            if d.model is None:
                self.stats.record("rejected")
                answer = {"status": "rejected", "latency_ms": 1e3 * (now - item.arrival), "reason": reason}
                item.future.set_result(answer)
            else:
                kept.append((item, d))
        return kept

    @property
    def _late_reason(self) -> str:
        c = self.controller
        deadline = f"its deadline ({c.horizon_ms:g} ms from arrival: {c.headroom:g} x the {c.sla_ms:g} ms SLA)"
        if c.mode == "shed":
            return f"shed: its batch would finish past {deadline} at the primary's measured service time"
        return f"no model here answers it within {deadline} or its share of the server's time at this load"

    def _runs_past(self, d: Decision) -> bool:
        """Whether `d` puts a row on a static model below its depth: it would run all its steps,
        past the budget the plan gave it (a controller without the artifact's accuracy table, or
        the static policy, does not know which models are static)."""
        engine = self.engines[d.model]
        return engine.fixed_depth and d.steps < engine.cap

    async def _serve_batch(self, loop, batch: list[Pending]) -> None:
        """The fallback's share first (it is quick, and the plan gave it the rows with the least
        slack; a plan uses one rung of the ladder), then the primary's in groups of similar step
        budgets, tightest first, each answered as soon as it is done."""
        planned = self._plan(batch)
        for name in self.fallbacks:
            await self._run(loop, name, [(item, d) for item, d in planned if d.model == name])
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

    def _asked(self, item: Pending) -> tuple[float, str]:
        return asked(item, self.default_steps)

    def _answer(self, name: str, members: list, result, start: float, experts: int | None) -> None:
        ms = 1e3 * (time.perf_counter() - start)  # until this loop can start the next run
        run_ms = 1e3 * (float(result.done_s.max()) - start)  # to its last row's answer
        least = min(d.steps for _, d in members)
        self.controller.observe(name, int(result.steps.max()), ms, len(members), experts, least, run_ms)
        engine = self.engines[name]
        for i, (item, d) in enumerate(members):
            latency = 1e3 * (float(result.done_s[i]) - item.arrival)
            # Adherence from what ran: the compute of the steps this model took, in the request's
            # unit, against the budget it asked for (not against the step cap the plan set); a
            # latency budget against the run's measured time, not the cost model's price for it.
            if not np.isfinite(result.confidence[i]):  # NaN is not JSON, and no answer either
                self.stats.bad(422)  # a 4xx, counted with the others
                largest = float(np.abs(np.asarray(item.x, np.float64)).max(initial=0.0))
                reason = f"the model's output for this input is not finite (its largest |x| is {largest:.3g})"
                item.future.set_result({"status": "not_finite", "error": reason})
                continue
            value, unit = self._asked(item)
            within = engine.within_budget(int(result.steps[i]), value, unit, experts)
            run_ms = 1e3 * (float(result.done_s[i]) - start)  # from the run's start to this row's answer
            if unit == "latency_ms":
                within = run_ms <= value * (1 + 1e-9)
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
                    "run_ms": run_ms,
                    "within_budget": bool(within),
                    "status": d.status,
                    "model": name,
                }
            )
