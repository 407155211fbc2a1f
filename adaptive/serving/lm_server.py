"""`adaptive serve --artifact LM_ART --ttft-ms T --tpot-ms P`: generation over HTTP, continuously batched.

POST /generate takes a prompt and its limits (adaptive/serving/lm_http_input.py) and answers,
when it is done, {"done", "text", "tokens", "count", "stop", "layers", "experts", "flops",
"prefill_flops", "ttft_ms", "tpot_ms", "status", "model", "degraded_tokens", "within_budget",
"within_sla"} (`within_budget`: its FLOPs kept its flops_budget, null when it set none or did not run to its stop;
`within_sla`: its TTFT and TPOT kept the server's SLAs, which a request admitted on time can
miss on a contended machine); with "stream": true it answers as
server-sent events instead, one `data: {"index", "token", "text", "layers", "experts"}` event per
token as it is made, then a last `data: {"done": true, ...}` event with the summary. Bad
requests get a 4xx with {"error": one line}; GET /healthz says what is loaded, GET /metrics is
Prometheus text (adaptive/serving/lm_server_stats.py), GET /openapi.json describes the server
(adaptive/serving/lm_openapi.py).

One scheduler task runs the model, on a worker thread so the event loop keeps taking requests:
between two decode steps it prefills waiting requests into free slots (priority 0 first, then
by arrival), then it makes one token for every slot in use (adaptive/serving/lm_engine.py).
Slots never change shape, so no request recompiles anything. The controller
(adaptive/serving/lm_controller.py) decides who joins (the primary, the fallback: status
"fallback", or a rejection: 503 "rejected") and, per step and per slot, the rung each runs at
(a looser exit threshold, fewer experts: status "degraded", with `degraded_tokens`). When `max_waiting`
wait already beyond what the free slots take, new requests are deferred (503 with retry_after_ms,
at least a TPOT). A request already
streaming is never dropped; a client that disconnects (streaming or waiting for its answer)
leaves its slot at the next step. A failed model call fails every request in flight (500) and
empties the slots of both models; serving goes on.
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

from adaptive.serving import lm_openapi
from adaptive.serving.connections import ConnectionLimit, deferred, listen, refuse, routing_errors
from adaptive.serving.http_input import BadRequest, check_content_type, check_no_query, parse_json, read_body
from adaptive.serving.lm_controller import LMController
from adaptive.serving.lm_engine import LMEngine, Token
from adaptive.serving.lm_flight import InFlight
from adaptive.serving.lm_http_input import parse_generate
from adaptive.serving.lm_server_stats import LMStats

MAX_BODY = 1 << 16
REFUSED = {"rejected": 503, "error": 500, "cancelled": 499}  # answered with a status code, not a stream
log = logging.getLogger(__name__)


class LMServer:
    def __init__(
        self,
        primary: LMEngine,
        controller: LMController,
        *,
        fallback: LMEngine | None = None,
        default_threshold: float | None = None,
        not_applicable: dict[str, str] | None = None,
        max_waiting: int = 64,
        read_timeout_s: float = 5.0,
        max_connections: int = 1000,
        idle_timeout_s: float = 60.0,
    ):
        self.engines = {"primary": primary, "fallback": fallback}
        self.controller, self.default_threshold = controller, default_threshold
        self.not_applicable = dict(not_applicable or {})  # field -> why the primary cannot apply it
        for blocks, ms in primary.warmup:  # first estimates, before the first request's steps
            controller.step_time.observe(blocks, ms)
        if primary.prefill_ms is not None:
            controller.observe_prefill(primary.prefill_ms)
        self.ttft_ms, self.tpot_ms = controller.ttft_ms, controller.tpot_ms
        self.max_waiting, self.read_timeout_s = max_waiting, read_timeout_s
        self._stopping = asyncio.Event()  # set by stop(): a body still arriving is not waited for
        self.max_connections, self.idle_timeout_s = max_connections, idle_timeout_s
        self.connections: ConnectionLimit | None = None
        self.stats = LMStats(self.ttft_ms, self.tpot_ms)
        self.waiting: list[InFlight] = []
        self.holding: dict[tuple[str, int], InFlight] = {}  # (model, slot) -> its request
        self.step_ms = {"primary": None, "fallback": None}  # measured, smoothed
        self._pool = ThreadPoolExecutor(max_workers=1)  # one model call at a time
        self._wake: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[routing_errors(self.stats.bad)])
        app.router.add_post("/generate", self.generate)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        gc.freeze()  # what exists now lives as long as the server: out of the collector's walks
        self._wake = asyncio.Event()
        self._scheduler = asyncio.create_task(self._schedule())

    async def _stop(self, app) -> None:
        self._scheduler.cancel()
        self._pool.shutdown(wait=False)
        gc.unfreeze()

    # -- handlers --------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        try:
            check_no_query(request)
            check_content_type(request.headers.get("Content-Type"))
            raw = await read_body(request, MAX_BODY, self.read_timeout_s, self._stopping)
            parsed = parse_generate(
                parse_json(raw), self.engines["primary"], self.default_threshold, self.not_applicable
            )
        except BadRequest as e:
            return await refuse(request, e, self.stats.bad)
        except ConnectionError:
            return web.Response(status=400)
        # those the free slots take at the next turn do not wait for one (fewer than the free slots
        # where the controller keeps some empty: one more sequence would slow every step past the SLA)
        primary = self.engines["primary"]
        waiting = len(self.waiting) - self.controller.admits(len(primary.free), primary.in_use)
        if waiting >= self.max_waiting:
            self.stats.finished("deferred", None, None, None)
            # when a place in the queue frees: the soonest slot's end, and at least one step's time
            return deferred(max(self._wait_ms(0), self.step_ms["primary"] or 0.0, self.controller.tpot_ms))
        flight = InFlight(parsed, arrival, asyncio.Queue())
        self.waiting.append(flight)
        self.waiting.sort(key=lambda f: (f.request.priority, f.arrival))
        self._wake.set()
        try:
            first = await flight.events.get()
            if first.get("done") and first["status"] in REFUSED:  # an answer, not a stream
                return web.json_response(first, status=REFUSED[first["status"]])
            if not parsed.stream:
                event = first
                while not event.get("done"):
                    event = await flight.events.get()
                return web.json_response(event)
        except asyncio.CancelledError:  # the client left (the handler is cancelled): free its slot
            flight.cancelled = True
            self._wake.set()
            raise
        return await self._stream(request, flight, first)

    async def _stream(self, request: web.Request, flight: InFlight, first: dict) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            event = first
            while True:
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if event.get("done"):
                    break
                event = await flight.events.get()
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            flight.cancelled = True  # the scheduler frees its slot at the next step
            self._wake.set()
            raise
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        p, f = self.engines["primary"], self.engines["fallback"]
        return web.json_response(
            {
                "status": "ok",
                "kind": "language_model",
                "primary": p.name,
                "fallback": f.name if f else None,
                "slots": p.slots,
                "slots_in_use": p.in_use,
                "waiting": len(self.waiting),
                "prompt_capacity": p.prompt_capacity - 1,
                "ttft_ms": self.ttft_ms,
                "tpot_ms": self.tpot_ms,
                "default_threshold": None if "threshold" in self.not_applicable else self.default_threshold,
                "not_applicable": self.not_applicable,
            }
        )

    async def openapi(self, request: web.Request) -> web.Response:
        document = lm_openapi.document(self.engines["primary"], self.not_applicable, MAX_BODY)
        return web.json_response(document)

    async def metrics(self, request: web.Request) -> web.Response:
        p = self.engines["primary"]
        text = self.stats.prometheus(
            p.in_use, p.slots, len(self.waiting), self.connections, self.step_ms, self.controller.prefill_ms
        )
        return web.Response(text=text, content_type="text/plain")

    # -- listening ---------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Starts the app and listens on host:port; the port bound (0: a free one)."""
        self._runner, self._listener, self.connections = await listen(
            self.app(),
            host,
            port,
            max_connections=self.max_connections,
            idle_timeout_s=self.idle_timeout_s,
            handler_cancellation=True,  # a client gone while it waits frees its slot
        )
        return self._listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._stopping.set()  # bodies still arriving are answered 503 rather than waited for
        self._listener.close()
        await self._runner.cleanup()

    # -- scheduling ----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            busy = any(e is not None and e.in_use for e in self.engines.values())
            if not self.waiting and not busy:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._admit(loop)
                for name, engine in self.engines.items():
                    if engine is not None and engine.in_use:
                        await self._step(loop, name, engine)
            except Exception as e:  # a failed model call fails every request in flight (500); serving goes on
                log.exception("a model call failed")
                try:
                    self._fail_all(f"{e.__class__.__name__}: {e}"[:200])
                except Exception:  # e.g. no memory for fresh slots: the next turn tries again
                    log.exception("could not reset after the failure")
            await asyncio.sleep(0)  # the handlers' turn

    async def _admit(self, loop) -> None:
        """Waiting requests into free slots, where the controller routes them (the primary, the
        fallback, or a rejection), while their prefills fit between two tokens."""
        primary, fallback = self.engines["primary"], self.engines["fallback"]
        joined = 0
        for flight in list(self.waiting):
            if flight.cancelled:
                self.waiting.remove(flight)
                self._finish(flight, "cancelled", None)
                continue
            running = [f.rung for (model, _), f in self.holding.items() if model == "primary"]
            if not self.controller.joins_now(running, joined):
                break
            wait_ms = 1e3 * (time.perf_counter() - flight.arrival) + self._wait_ms(self.waiting.index(flight))
            where = self.controller.route(
                primary_free=bool(primary.free),
                occupancy=primary.in_use,
                fallback_free=bool(fallback is not None and fallback.free),
                wait_ms=wait_ms,
            )
            if where == "wait":
                continue
            self.waiting.remove(flight)
            if where == "reject":
                self._finish(flight, "rejected", None, reason=self._rejection(wait_ms, bool(primary.free)))
                continue
            engine, flight.model = self.engines[where], where
            flight.rung = self.controller.start_rung(float(flight.request.checked.threshold_B[0]))
            start = time.perf_counter()
            try:
                token = await loop.run_in_executor(
                    self._pool, engine.join, flight.request.prompt, flight.request.checked
                )
            except Exception as e:  # in neither list now: answered here, before the rest fail
                self._finish(flight, "error", None, f"{e.__class__.__name__}: {e}"[:200])
                raise
            if where == "primary":
                self.controller.observe_prefill(1e3 * (time.perf_counter() - start))
            flight.slot, flight.prefill_flops, flight.joined_at = token.slot, token.flops, time.perf_counter()
            self.holding[where, token.slot] = flight
            joined += 1
            self._deliver(where, token)

    async def _step(self, loop, name: str, engine: LMEngine) -> None:
        for (model, slot), flight in list(self.holding.items()):
            if model == name and flight.cancelled:
                engine.leave(slot)
                del self.holding[model, slot]
                self._finish(flight, "cancelled", None)
        if not engine.in_use:
            return
        threshold_S = expert_cap_S = None
        plan = {}
        if name == "primary":
            mine = [
                (slot, f.request.priority, f.joined_at, f.rung) for (m, slot), f in self.holding.items() if m == name
            ]
            fallback_busy = self.engines["fallback"] is not None and self.engines["fallback"].in_use
            plan = self.controller.plan_step(mine, (self.step_ms["fallback"] or 0.0) if fallback_busy else 0.0)
            rungs = self.controller.rungs
            threshold_S = np.full((engine.slots,), np.nan, np.float32)
            expert_cap_S = np.full((engine.slots,), 1 << 20, np.int32)
            for slot, rung in plan.items():
                threshold_S[slot], expert_cap_S[slot] = rungs[rung].threshold, rungs[rung].experts
        start = time.perf_counter()
        made = await loop.run_in_executor(self._pool, engine.step, threshold_S, expert_cap_S)
        ms = 1e3 * (time.perf_counter() - start)
        self._smooth(self.step_ms, name, ms)
        if name == "primary":
            self.controller.observe_step([(plan[t.slot], t.layers) for t in made if t.token >= 0], ms)
        for token in made:
            flight = self.holding.get((name, token.slot))
            if flight is not None and plan.get(token.slot, flight.rung) > flight.rung and token.token >= 0:
                flight.degraded += 1
            self._deliver(name, token)

    def _deliver(self, name: str, token: Token) -> None:
        """A token to its request's events; the summary when it was the last."""
        flight = self.holding.get((name, token.slot))
        if flight is None:
            return
        if token.token >= 0:
            first = flight.first_at is None  # it comes with the prompt's prefill
            flight.add(token, time.perf_counter())
            self.stats.token(token.layers, token.experts, token.flops, first)
        if token.stop != "running":
            del self.holding[name, token.slot]
            status = "fallback" if name == "fallback" else "degraded" if flight.degraded else "ok"
            self._finish(flight, status, token.stop)

    def _finish(
        self, flight: InFlight, status: str, stop: str | None, error: str | None = None, reason: str | None = None
    ) -> None:
        self.stats.finished(status, flight.ttft_ms, flight.tpot_ms, flight.within_budget(status))
        within_sla = flight.within_sla(status, self.ttft_ms, self.tpot_ms)
        flight.answer(status, stop, error, reason, within_sla)

    def _rejection(self, wait_ms: float, primary_free: bool) -> str:
        """Why a request the controller rejects is rejected, in one line."""
        ttft, tpot = self.controller.ttft_ms, self.controller.tpot_ms
        why = "no free slot"
        if primary_free:
            why = f"one more sequence would slow every step past the {tpot:g} ms TPOT SLA"
        if self.controller.policy == "adaptive":
            why += ", and no fallback slot" if self.engines["fallback"] is not None else ", and no fallback model"
        return f"its first token would come {wait_ms:.1f} ms after arrival, past the {ttft:g} ms TTFT SLA: {why}"

    def _fail_all(self, error: str) -> None:
        for key, flight in list(self.holding.items()):
            del self.holding[key]
            self._finish(flight, "error", None, error)
        for flight in self.waiting:
            self._finish(flight, "error", None, error)
        self.waiting.clear()
        for engine in self.engines.values():
            if engine is not None:
                engine.reset()
        log.error("answered every request in flight with an error: %s", error)

    def _wait_ms(self, rank: int) -> float:
        """About how long the `rank`-th waiting request waits for a primary slot: until the
        (rank + 1)-th soonest slot frees, each slot's sequence running to its most new tokens."""
        engine, step = self.engines["primary"], self.step_ms["primary"] or 0.0
        left = sorted(engine.tokens_left())
        if engine.free:
            return 0.0
        return step * (left[min(rank, len(left) - 1)] if left else 0) + (self.controller.prefill_ms or 0.0)

    @staticmethod
    def _smooth(table: dict, name: str, ms: float) -> None:
        table[name] = ms if table[name] is None else 0.8 * table[name] + 0.2 * ms
