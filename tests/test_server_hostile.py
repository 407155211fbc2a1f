"""The server under hostile clients: slow bodies are timed out, connections are limited, a
dropped client is one log line, bad `adaptive serve` arguments are one-line errors, and fuzzed
requests drawn from the server's own OpenAPI document get a one-line 4xx or an answer, never a
500, each 4xx counted in /metrics."""

import asyncio
import gzip
import json
import logging
import signal
import socket
import subprocess
import threading
import zlib
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings

from adaptive.config import ConfigError
from adaptive.inference.export import export_run
from adaptive.serving.controller import Controller
from adaptive.serving.engine import Engine
from adaptive.serving.server import Server
from tests.helpers import cli, train_tiny
from tests.schema_fuzz import acceptable, matches, requests

GOOD = [1.0, 0, 0, 1, -1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]
SLOW_HEAD = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    train_tiny(root / "run", 20)
    return Engine.from_artifact(export_run(root / "run", root / "art"), buckets=(1, 4, 16))


def _server(engine, **kw) -> Server:
    return Server(engine, Controller(engine.cap, 1000.0), max_batch=16, **kw)


async def _until(condition, what: str, tries: int = 500) -> None:
    """Waits (at most `tries` x 10 ms) for the server side to catch up with the client's."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw: {what}")


async def _exchange(port: int, request: bytes) -> bytes:
    """Sends `request` on a fresh connection and reads until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _slow(port: int):
    """A client that sends its headers and 10 of the 100 body bytes it announced, then waits."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(SLOW_HEAD + b'{"x": [1, ')
    await writer.drain()
    return reader, writer


def test_slow_clients_are_timed_out_and_connections_limited_while_healthz_answers(engine, caplog):
    server = _server(engine, read_timeout_s=1.0, max_connections=8)

    async def main():
        port = await server.start("127.0.0.1", 0)
        try:
            slow = [await _slow(port) for _ in range(6)]
            assert (await _exchange(port, HEALTHZ)).startswith(b"HTTP/1.1 200")  # 7 of 8 slots taken
            await _until(lambda: server.connections.open == 6, "the healthz connection closed")
            slow += [await _slow(port) for _ in range(2)]
            await _until(lambda: server.connections.open == 8, "8 connections open")
            refused = [await _exchange(port, HEALTHZ) for _ in range(3)]  # past the limit: 503, closed
            timed_out = [await asyncio.wait_for(reader.read(), 10) for reader, _ in slow]  # 408, closed
            for _, writer in slow:
                writer.close()
            await _until(lambda: server.connections.open == 0, "the slow connections closed")
            health = await _exchange(port, HEALTHZ)
            received = server._received
            reader, writer = await _slow(port)  # a client that gives up mid-body
            await _until(lambda: server._received == received + 1, "the dropped request read")
            writer.close()
            await _until(lambda: server.stats.dropped == 1, "the dropped connection seen")
            metrics = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return refused, timed_out, health, metrics
        finally:
            await server.stop()

    with caplog.at_level("WARNING"):
        refused, timed_out, health, metrics = asyncio.run(main())
    for answer in refused:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"limit of 8 open connections" in json.loads(body)["error"].encode()
    for answer in timed_out:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert "did not arrive within 1 s" in json.loads(body)["error"]  # and the server closed it: read() ended
    assert health.startswith(b"HTTP/1.1 200")  # the slots came back
    text = metrics.decode()
    assert 'adaptive_bad_requests_by_code_total{code="408"} 8' in text and "adaptive_bad_requests_total 8" in text
    assert "adaptive_refused_connections_total 3" in text and "adaptive_dropped_connections_total 1" in text
    records = [r for r in caplog.records if r.name.startswith(("adaptive", "aiohttp"))]
    assert not [r for r in records if r.exc_info], "a traceback was logged"
    assert sum("answered 408 and closed" in r.getMessage() for r in records) == 8
    assert sum("dropped the connection" in r.getMessage() for r in records) == 1
    assert len(records) <= 8 + 1 + 1  # one line per connection timed out or dropped, one for the limit


def test_a_shutdown_answers_a_body_still_arriving_with_503_rather_than_waiting_for_it(engine):
    """SIGTERM (a rolling restart) stops the server now: a client mid-body is told to send its
    request again, not kept until --read-timeout-s and then told its body was late."""
    server = _server(engine, read_timeout_s=600.0)

    async def main():
        port = await server.start("127.0.0.1", 0)
        received = server._received
        reader, writer = await _slow(port)
        await _until(lambda: server._received == received + 1, "the slow request read")
        await asyncio.wait_for(server.stop(), 60)  # well before the 600 s the body may take
        try:
            return await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()

    head, _, body = asyncio.run(main()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    assert json.loads(body)["error"] == "the server is shutting down; send the request again"


def test_stuck_headers_are_closed_after_the_idle_timeout_and_bad_http_is_one_log_line(engine, caplog):
    server = _server(engine, idle_timeout_s=0.3)

    async def main():
        port = await server.start("127.0.0.1", 0)
        try:
            stuck = await _exchange(port, b"POST /predict HTTP/1.1\r\nHost: t\r\n")  # never ends its headers
            malformed = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: 1\r\n\r\n")
            await _until(lambda: server.connections.open == 0, "both connections closed")
            return stuck, malformed
        finally:
            await server.stop()

    with caplog.at_level("WARNING"):
        stuck, malformed = asyncio.run(main())
    assert stuck == b"" and malformed.split(b"\r\n")[0].endswith(b" 400 Bad Request")  # closed unanswered; a 400
    records = [r for r in caplog.records if r.name.startswith(("adaptive", "aiohttp"))]
    assert len(records) == 1 and not records[0].exc_info and "\n" not in records[0].getMessage(), records
    assert records[0].levelname == "WARNING" and "Error handling request" in records[0].getMessage()


def test_a_port_in_use_is_one_line_naming_it_and_port_0_binds_a_free_one(engine):
    async def main():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match=f"^cannot listen on 127.0.0.1:{port}: Address already in use$"):
                await _server(engine).start("127.0.0.1", port)
        # a resolver's answers, not a network's: no such name, and a name server out of reach
        loop = asyncio.get_running_loop()
        for errno, said in [(socket.EAI_NONAME, "no such host"), (socket.EAI_AGAIN, "cannot resolve the host")]:

            async def fail(*args, errno=errno, **kwargs):
                raise socket.gaierror(errno, "resolver says no")

            loop.getaddrinfo = fail
            with pytest.raises(ConfigError, match=rf"^cannot listen on no.such:0: {said} \(resolver says no\)$"):
                await _server(engine).start("no.such", 0)
        del loop.getaddrinfo
        server = _server(engine)
        bound = await server.start("127.0.0.1", 0)
        try:
            return port, bound, await _exchange(bound, HEALTHZ)
        finally:
            await server.stop()

    port, bound, health = asyncio.run(main())
    assert bound not in (0, port) and health.startswith(b"HTTP/1.1 200")


def test_bad_serve_arguments_are_one_line_errors_before_anything_loads(capsys):
    from adaptive.cli.main import main

    cases = [
        (["--sla-ms", "0"], "--sla-ms must be a finite number > 0; got 0"),
        (["--sla-ms", "nan"], "--sla-ms must be a finite number > 0; got nan"),
        (["--sla-ms", "-5"], "--sla-ms must be a finite number > 0; got -5"),
        (["--max-batch", "0"], "--max-batch must be in [1, 4096]; got 0"),
        (["--max-batch", "100000"], "--max-batch must be in [1, 4096]"),
        (["--port", "99999"], "--port must be in [0, 65535] (0: any free port); got 99999"),
        (["--port", "-1"], "--port must be in [0, 65535]"),
        (["--accuracy-tolerance", "inf"], "--accuracy-tolerance must be a finite number >= 0; got inf"),
        (["--read-timeout-s", "0"], "--read-timeout-s must be a finite number > 0"),
        (["--idle-timeout-s", "nan"], "--idle-timeout-s must be a finite number > 0"),
        (["--max-connections", "0"], "--max-connections must be >= 1; got 0"),
        (["--default-budget", "0"], "--default-budget must be >= 1; got 0"),
    ]
    for args, message in cases:
        # No artifact exists there: an argument checked after loading would fail on that instead.
        assert main(["serve", "--artifact", "/nonexistent/artifact", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"adaptive: error: {message}") and err.count("\n") == 1, (args, err)


def test_the_banner_writes_an_ipv6_host_as_a_url_does():
    from adaptive.serving.launch import url_host

    assert [url_host(h) for h in ("::1", "[::1]", "127.0.0.1", "localhost")] == [
        "[::1]",
        "[::1]",
        "127.0.0.1",
        "localhost",
    ]


def test_serve_prints_the_port_it_bound_answers_there_and_stops_on_sigterm(engine):
    process = subprocess.Popen(
        cli("serve", "--artifact", engine.name, "--port", "0", "--max-batch", "4", "--default-budget", "99"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, process.kill)  # a server that never comes up fails, not hangs
    watchdog.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, process.stderr.read()
        bound = int(line.split("http://127.0.0.1:")[1].split(" ")[0])
        assert bound != 0
        health = asyncio.run(_exchange(bound, HEALTHZ))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        process.kill()
    assert health.startswith(b"HTTP/1.1 200")
    err = process.stderr.read()
    assert "Traceback" not in err and f"note: --default-budget 99 is past {engine.name}'s cap; it is the cap" in err


# -- fuzzing from the OpenAPI document -------------------------------------------------------------


def test_fuzzed_requests_get_an_answer_or_a_one_line_4xx_and_each_4xx_is_counted(engine):
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(_server(engine).app()), loop=loop)
    loop.run_until_complete(client.start_server())
    document = loop.run_until_complete(loop.run_until_complete(client.get("/openapi.json")).json())
    predict = document["paths"]["/predict"]["post"]
    request_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    seen: dict[int, int] = {}

    async def send(body: bytes, content_type: str | None):
        headers, skip = ({"Content-Type": content_type}, []) if content_type else ({}, ["Content-Type"])
        response = await client.post("/predict", data=body, headers=headers, skip_auto_headers=skip)
        return response.status, await response.text()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(requests(request_schema, hostile=("x",)))
    def one(request):
        status, text = loop.run_until_complete(send(*request))
        seen[status] = seen.get(status, 0) + 1
        assert text.startswith("{"), (repr(request)[:200], status, text[:200])  # JSON, not aiohttp's text/plain 500
        answer = json.loads(text, parse_constant=_not_json)
        assert str(status) in predict["responses"] and status != 500, (repr(request)[:200], status, answer)
        assert matches(answer, predict["responses"][str(status)]["content"]["application/json"]["schema"]), answer
        assert "error" not in answer or "\n" not in answer["error"], answer
        assert status != 200 or acceptable(*request, request_schema), (
            "accepted what the document refuses",
            repr(request)[:200],
        )

    try:
        one()
        status, text = loop.run_until_complete(send(json.dumps({"x": GOOD, "budget": 3}).encode(), "application/json"))
        metrics = loop.run_until_complete(loop.run_until_complete(client.get("/metrics")).text())
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert status == 200 and json.loads(text)["status"] == "ok"
    assert sum(seen.values()) >= 200 and seen.get(200, 0) >= 20 and seen.get(400, 0) >= 20, seen
    bad = sum(n for status, n in seen.items() if 400 <= status < 500)
    assert f"adaptive_bad_requests_total {bad}\n" in metrics, (seen, metrics)


def _not_json(constant: str):
    raise AssertionError(f"{constant} is not JSON")


def test_an_output_that_overflows_for_a_finite_input_is_a_422_not_nan(tmp_path):
    """3e38 is a float32 the request schema accepts; an MLP's sums overflow on it. NaN in an
    answer is not JSON (strict parsers refuse the whole body), and no prediction either."""
    train_tiny(tmp_path / "run", 2, config="configs/mnist1d.py:tiny")
    mlp = Engine.from_artifact(export_run(tmp_path / "run", tmp_path / "art"), buckets=(1,))

    async def main():
        async with TestClient(TestServer(_server(mlp).app())) as client:
            huge = await client.post("/predict", json={"x": [3e38] * 40})
            fine = await client.post("/predict", json={"x": [0.5] * 40})
            answers = [(r.status, json.loads(await r.text(), parse_constant=_not_json)) for r in (huge, fine)]
            return answers, await (await client.get("/metrics")).text()

    ((status, answer), (ok, _)), metrics = asyncio.run(main())
    assert (status, ok) == (422, 200)
    assert answer == {"status": "not_finite", "error": "the model's output for this input is not finite (its "
                      "largest |x| is 3e+38)"}  # fmt: skip
    assert 'by_code_total{code="422"} 1' in metrics


def test_only_queued_requests_count_as_arrivals_so_bad_ones_cannot_degrade_good_ones(engine):
    """The arrival rate sets how long a batch may run (more arrivals: fewer steps); a flood of
    malformed requests between two good ones is not load the model serves."""
    server = _server(engine)
    counts, update = [], server.arrivals.update
    server.arrivals.update = lambda now, received: counts.append(received) or update(now, received)

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            statuses = [(await client.post("/predict", json={"x": GOOD})).status]
            for _ in range(30):
                statuses.append((await client.post("/predict", json={"x": GOOD[:3]})).status)
            statuses.append((await client.post("/predict", json={"x": GOOD})).status)
            return statuses

    statuses = asyncio.run(main())
    assert statuses == [200] + [400] * 30 + [200]
    assert counts == [1, 2]  # one batch each, fed the queued count (the received count is 32)
    assert server._received == 32


def test_an_unknown_path_or_method_is_a_one_line_json_4xx_and_counted(engine):
    async def main():
        async with TestClient(TestServer(_server(engine).app())) as client:
            long = await client.get("/" + "a" * 300)
            wrong = await client.delete("/predict")
            answers = [(r.status, (await r.json())["error"], r.headers.get("Allow")) for r in (long, wrong)]
            return answers, await (await client.get("/metrics")).text()

    (long, wrong), metrics = asyncio.run(main())
    assert long[0] == 404 and long[1] == f"nothing is served at '/{'a' * 76}...'; GET /openapi.json lists what is"
    assert wrong == (405, "DELETE is not allowed on '/predict'; use POST", "POST")
    assert "adaptive_bad_requests_total 2\n" in metrics and 'by_code_total{code="405"} 1' in metrics


def test_a_body_its_content_encoding_does_not_decode_is_a_one_line_400_and_counted(engine, caplog):
    """gzip that is not, zlib said to be gzip: aiohttp fails to decode while the handler reads, and
    would answer 500 with a traceback; the connection, which its parser cannot go on with, closes."""
    good = json.dumps({"x": GOOD}).encode()

    async def main():
        async with TestClient(TestServer(_server(engine).app())) as client:
            answers = []
            for encoding, body in [("gzip", b"not gzip"), ("gzip", zlib.compress(good)), ("deflate", b"\x1f\x8b no")]:
                headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
                response = await client.post("/predict", data=body, headers=headers)
                answers.append((response.status, await response.json(), response.headers.get("Connection")))
            zipped = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            ok = await client.post("/predict", data=gzip.compress(good), headers=zipped)  # a fresh connection
            return answers, ok.status, await (await client.get("/metrics")).text()

    with caplog.at_level(logging.WARNING):
        answers, ok, metrics = asyncio.run(main())
    for (status, answer, connection), encoding in zip(answers, ["gzip", "gzip", "deflate"], strict=True):
        assert status == 400 and connection == "close"
        assert answer == {"error": f"the request body is malformed: Can not decode content-encoding: {encoding}"}
    assert ok == 200 and 'adaptive_bad_requests_by_code_total{code="400"} 3\n' in metrics
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no traceback logged


def test_a_query_string_is_refused_not_served_at_the_default_budget(engine):
    async def main():
        async with TestClient(TestServer(_server(engine).app())) as client:
            response = await client.post("/predict?budget=1&unit=steps", json={"x": GOOD})
            return response.status, await response.json()

    status, answer = asyncio.run(main())
    assert status == 400
    assert answer["error"] == "/predict reads no query parameters (got 'budget, unit'); put them in the JSON body"


def test_the_openapi_document_describes_the_served_model(engine):
    async def main():
        async with TestClient(TestServer(_server(engine).app())) as client:
            response = await client.get("/openapi.json")
            return response.status, await response.json()

    status, document = asyncio.run(main())
    predict = document["paths"]["/predict"]["post"]
    x = predict["requestBody"]["content"]["application/json"]["schema"]["properties"]["x"]
    assert status == 200 and document["openapi"].startswith("3.") and (x["minItems"], x["maxItems"]) == (16, 16)
    assert {"200", "400", "408", "413", "415", "503"} <= set(predict["responses"])
    assert {"/predict", "/healthz", "/metrics", "/openapi.json"} <= set(document["paths"])
    # no cost model: the units it offers are those the model can price
    units = predict["requestBody"]["content"]["application/json"]["schema"]["properties"]["unit"]["enum"]
    assert units == ["steps", "flops", "macs", "memory_mb"] == list(engine.units)


def test_flags_of_the_other_kind_of_model_are_refused_not_dropped(engine, tmp_path, capsys):
    """A classifier's artifact and run: the language-model flags would be silently ignored."""
    from adaptive.cli.main import main

    run = Path(engine.name).parent / "run"
    for argv, message in [
        (["serve", "--artifact", engine.name, "--ttft-ms", "50"], "--ttft-ms applies to language models"),
        (["serve", "--artifact", engine.name, "--max-waiting", "3"], "--max-waiting applies to language models"),
        (["export", "--workdir", str(run), "--out", str(tmp_path / "a"), "--slots", "3"], "--slots applies to"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"adaptive: error: {message}") and "holds a classifier" in err, err
    assert not (tmp_path / "a").exists()


def test_a_deferral_says_when_to_retry_in_the_body_and_the_standard_header():
    """Never "retry in 0 ms" (into the same full queue), and Retry-After in whole seconds."""
    from adaptive.serving.connections import deferred

    for retry_ms, body_ms, header in [(0.0, 1.0, "1"), (0.01, 1.0, "1"), (250.04, 250.0, "1"), (1500.0, 1500.0, "2")]:
        response = deferred(retry_ms)
        assert response.status == 503 and response.headers["Retry-After"] == header
        assert json.loads(response.body) == {"status": "deferred", "retry_after_ms": body_ms}
