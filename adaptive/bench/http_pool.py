"""A lean keep-alive HTTP/1.1 client for the open-loop load generator: JSON POSTs to one host.

Why not aiohttp's client: on a machine whose few cores it shares with the server, it spends
more CPU per request than the server it is loading, so the "ceiling" the benchmark finds is
the generator's own, and its lag was charged to the server as latency
(latency runs from the *scheduled* arrival). This client writes pre-encoded requests on plain
asyncio streams and reads Content-Length bodies; nothing else of HTTP is needed to load our
server (every answer of aiohttp's `json_response` carries a Content-Length).

Each connection carries one request at a time (no pipelining: a slow answer must not hold the
ones behind it on the same socket), and a request that finds no idle connection opens one: the
client never queues, so the server sees the schedule as it was drawn.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


class HTTPError(Exception):
    """An answer this client cannot read (no Content-Length, a broken status line); one line."""


class ConnectionPool:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain http to one host; got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._base = parts.path.rstrip("/")
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0  # connections opened in all (how concurrent the load got)

    def request_bytes(self, path: str, payload: bytes) -> bytes:
        """The whole request, encoded once before the schedule starts (encoding is client work
        that would otherwise run between scheduled sends)."""
        head = (
            f"POST {self._base}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def send(self, request: bytes) -> tuple[int, dict]:
        """(HTTP status, the JSON answer) of one pre-encoded request. A reused connection the
        server has closed meanwhile is retried once on a fresh one."""
        if self._idle:
            try:
                return await self._exchange(self._idle.pop(), request)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # closed by the server while idle (keep-alive timeout): nothing was answered
        self.opened += 1
        return await self._exchange(await asyncio.open_connection(self.host, self.port), request)

    async def _exchange(self, conn, request: bytes) -> tuple[int, dict]:
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, keep = _parse_head(head)
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            writer.close()
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"error": body[:200].decode(errors="replace")}
        return status, answer if isinstance(answer, dict) else {"error": "the answer is not a JSON object"}

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep the connection) from a response's status line and headers."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        version, status = lines[0].split(" ", 2)[:2]
        status = int(status)
    except ValueError:
        raise HTTPError(f"not an HTTP status line: {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" not in headers:
        raise HTTPError(f"an answer without Content-Length (HTTP {status})")
    keep = headers.get("connection", "keep-alive" if version == "HTTP/1.1" else "close") != "close"
    return status, int(headers["content-length"]), keep
