"""The server's guard on connections: how many may be open at once, and one log line per
connection that goes wrong instead of aiohttp's traceback.

Without a limit, clients that open connections and never finish a request hold a file
descriptor each until the process runs out, and then nothing (not /healthz either) can be
reached. `ConnectionLimit` wraps aiohttp's protocol factory: past `limit` open connections a new
one is answered 503 (one line of JSON) and closed, so the descriptors held stay bounded and the
slots free up as the body read timeout and the idle timeout close the slow ones.

aiohttp logs a traceback of some 25 lines for each request whose connection breaks or whose HTTP
is malformed; `quiet_http_log` is the logger handed to it instead, which turns those (and only
those: a bug's traceback stays) into one warning line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from adaptive.config import ConfigError

log = logging.getLogger("adaptive.serving.server")
REFUSAL_LINGER_S = 1.0  # how long a refused connection may stay open for the client to read its 503
LOG_EVERY_S = 10.0  # at most one "at the limit" line this often, however many are refused


class _OneLine(logging.Filter):
    """Records of client-side failures lose their traceback and become one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (ConnectionError, HttpProcessingError, TimeoutError)):
            detail = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
            record.msg = f"{record.getMessage()}: {exc.__class__.__name__}: {str(detail).splitlines()[0][:200]}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


quiet_http_log = logging.getLogger("adaptive.serving.server.http")
quiet_http_log.addFilter(_OneLine())


def _refusal(limit: int) -> bytes:
    body = json.dumps({"error": f"the server is at its limit of {limit} open connections; try again"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refused(asyncio.Protocol):
    """Writes the 503 at once, then closes when the client's request arrives (read first, so the
    close is a FIN the client can read the answer before, not a reset), at its EOF, or after
    REFUSAL_LINGER_S."""

    def __init__(self, answer: bytes):
        self.answer, self.transport, self.timer = answer, None, None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.answer)
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, passed through; tells the limit when it ends."""

    __slots__ = ("inner", "release")

    def __init__(self, inner: asyncio.Protocol, release):
        self.inner, self.release = inner, release

    def connection_made(self, transport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            release, self.release = self.release, None
            if release is not None:
                release()


class ConnectionLimit:
    """A protocol factory for `loop.create_server`: aiohttp's `factory` for up to `limit` open
    connections, a 503-and-close past it. `open` and `refused` are what /metrics shows."""

    def __init__(self, factory, limit: int):
        self.factory, self.limit = factory, limit
        self.open = self.refused = 0
        self._answer = _refusal(limit)
        self._logged = -LOG_EVERY_S

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self.refused += 1
            if time.monotonic() - self._logged >= LOG_EVERY_S:
                self._logged = time.monotonic()
                log.warning("at the limit of %d open connections: refusing new ones with 503", self.limit)
            return _Refused(self._answer)
        self.open += 1
        return _Counted(self.factory(), self._release)

    def _release(self) -> None:
        self.open -= 1


async def listen(
    app, host: str, port: int, *, max_connections: int, idle_timeout_s: float, handler_cancellation: bool = False
):
    """`app` served on host:port behind a limit of `max_connections` open connections:
    (its runner, the listening server, the limit). A port that cannot be bound is a ConfigError
    naming it. `handler_cancellation`: a handler is cancelled when its client disconnects."""
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=quiet_http_log,
        keepalive_timeout=idle_timeout_s,
        handler_cancellation=handler_cancellation,
    )
    await runner.setup()
    limit = ConnectionLimit(runner.server, max_connections)
    try:
        listener = await asyncio.get_running_loop().create_server(limit, host, port)
    except OSError as e:
        await runner.cleanup()
        if isinstance(e, socket.gaierror):  # the host did not resolve: a resolver's EAI_* (negative) errno
            unknown = e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
            reason = f"{'no such host' if unknown else 'cannot resolve the host'} ({e.strerror})"
        else:  # asyncio's message repeats the address; the errno's name says it all
            reason = os.strerror(e.errno) if e.errno else str(e)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
    return runner, listener, limit


def routing_errors(count):
    """An aiohttp middleware: a path no route serves (404) or a method its route does not take
    (405) is answered with one line of JSON naming it, as every other bad request is, and counted
    by `count(status)`; aiohttp's own answer would be plain text, and /metrics would miss it."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as e:
            count(e.status)
            path = request.path if len(request.path) <= 80 else request.path[:77] + "..."
            if e.status == 404:
                error = f"nothing is served at {path!r}; GET /openapi.json lists what is"
                return web.json_response({"error": error}, status=404)
            allowed = ", ".join(sorted(e.allowed_methods))
            error = f"{request.method} is not allowed on {path!r}; use {allowed}"
            return web.json_response({"error": error}, status=405, headers={"Allow": allowed})

    return middleware


async def refuse(request: web.Request, e, count) -> web.StreamResponse:  # e: a BadRequest
    """A 4xx with one line of JSON, counted by `count(status)`. A 408 also closes the connection
    at once (its body is still owed, and waiting for it is what a slow client wants), as does a
    body that cannot be decoded (aiohttp would read on after the answer and log a traceback)."""
    count(e.status)
    response = web.json_response({"error": str(e)}, status=e.status)
    if not e.close:
        return response
    log.warning("%s: %s; answered %d and closed", request.remote, e, e.status)
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left meanwhile
    request.protocol.force_close()  # no lingering read of the rest of the body
    return response


def deferred(retry_ms: float) -> web.Response:
    """A 503 for a full queue: `retry_after_ms` in the body (at least a millisecond: 0 would tell
    a client to retry at once, into the same full queue) and the standard Retry-After header, in
    whole seconds (at least 1), for clients and proxies that read only that."""
    retry_ms = max(float(retry_ms), 1.0) if math.isfinite(retry_ms) else 1e3  # no estimate: a second
    headers = {"Retry-After": str(max(1, math.ceil(retry_ms / 1e3)))}
    return web.json_response({"status": "deferred", "retry_after_ms": round(retry_ms, 1)}, status=503, headers=headers)
