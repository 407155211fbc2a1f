"""The load generator's HTTP client: keep-alive reuse, a connection closed while idle is retried,
answers it cannot read are errors (counted by the generator, never dropped)."""

import asyncio
import json

import pytest

from adaptive.bench.http_pool import ConnectionPool, HTTPError, _parse_head
from adaptive.bench.loadgen import run


def test_the_response_head_gives_status_length_and_whether_to_keep_the_connection():
    assert _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n") == (200, 12, True)
    assert _parse_head(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 3\r\n\r\n") == (
        503,
        3,
        False,
    )
    assert _parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n") == (200, 2, False)
    with pytest.raises(HTTPError, match="without Content-Length"):
        _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HTTPError, match="not an HTTP status line"):
        _parse_head(b"garbage\r\n\r\n")


async def _serve(handle, scenario):
    """A raw one-request-per-connection server on loopback running `scenario(url)`."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await scenario(f"http://127.0.0.1:{port}")


async def _read_request(reader) -> dict:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(h for h in head.decode().split("\r\n") if h.lower().startswith("content-length")).split(":")[1])
    return json.loads(await reader.readexactly(length))


def test_a_connection_the_server_closed_while_idle_is_retried_on_a_fresh_one():
    async def handle(reader, writer):  # answers one request, then closes without saying so
        body = json.dumps({"status": "ok", "echo": (await _read_request(reader))["i"]}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async def scenario(url):
        pool = ConnectionPool(url)
        answers = []
        for i in range(3):
            answers.append(await pool.send(pool.request_bytes("/predict", json.dumps({"i": i}).encode())))
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
        pool.close()
        return answers, pool.opened

    answers, opened = asyncio.run(_serve(handle, scenario))
    assert answers == [(200, {"status": "ok", "echo": i}) for i in range(3)] and opened == 3


def test_answers_the_client_cannot_read_are_counted_as_errors():
    async def handle(reader, writer):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario(url):
        return await run(url, [0.0, 0.01], [{"x": [1]}, {"x": [2]}], timeout_s=5.0)

    records = asyncio.run(_serve(handle, scenario))
    assert [r["status"] for r in records] == ["error", "error"]
    assert all("Content-Length" in r["error"] and r["http"] is None and r["done"] >= r["sent"] for r in records)


def test_only_plain_http_urls_are_taken():
    with pytest.raises(ValueError, match="plain http"):
        ConnectionPool("https://example.org")
