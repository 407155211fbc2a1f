"""Serving generation: continuous batching over HTTP, streamed token by token, with TTFT and
TPOT measured, bad requests refused in one line, and nothing recompiled while serving."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings

from adaptive.data import byte_vocab
from adaptive.inference.slots import SlotDecoder
from adaptive.serving.lm_controller import LMController, ladder
from adaptive.serving.lm_engine import LMEngine
from adaptive.serving.lm_http_input import not_applicable
from adaptive.serving.lm_server import LMServer
from tests.helpers import COMPILES
from tests.schema_fuzz import acceptable, matches, requests
from tests.test_generate import _decoder


@pytest.fixture(scope="module")
def decoder():
    return _decoder(["--config.lm.exits=true", "--config.moe.enabled=true", "--config.moe.k=2"])


META = {"caps": {"layers": 4, "experts_per_token": 2}, "exit_threshold": {"calibrated": None}}
# a rung that always exits after the first block (threshold 0), as a calibration could measure it
LOOSE = {**META, "exit_threshold": {"calibrated": {"tested": [{"threshold": 0.0, "disagreement": 0.5, "blocks": 1}]}}}


# the fixture's model: exits and experts, no MoD blocks
NOT_APPLICABLE = not_applicable({"lm": {"exits": True, "mod_capacity": 0.0}, "moe": {"enabled": True}}, 4)


def _server(decoder, slots: int, *, tpot_ms=500.0, ttft_ms=5000.0, policy="adaptive", fallback=None, meta=META):
    engine = LMEngine(SlotDecoder.of(decoder, slots), name="tiny")
    engine.warm()
    controller = LMController(ladder(meta), tpot_ms=tpot_ms, ttft_ms=ttft_ms, policy=policy)
    return LMServer(engine, controller, fallback=fallback, not_applicable=NOT_APPLICABLE), engine


def _want(decoder, text: str, **limits) -> list[int]:
    prompt = byte_vocab.encode(text.encode(), eos=False)
    out = decoder([prompt], decoder.limits(1, **limits))
    return np.asarray(out.tokens_BxM[0, : int(out.count_B[0])]).tolist()


def _events(body: str) -> list[dict]:
    return [json.loads(line.removeprefix("data: ")) for line in body.split("\n\n") if line.startswith("data: ")]


def test_concurrent_requests_stream_and_answer_the_decoders_tokens_without_recompiling(decoder):
    server, engine = _server(decoder, 2, policy="static")
    slots = engine.fns
    requests = [
        {"prompt": "def f(", "threshold": 0.5, "stream": True},
        {"prompt": "import", "max_new_tokens": 3},
        {"prompt": "x = 1", "temperature": 1.0, "seed": 4, "stream": True},
        {"prompt": "for i", "flops_budget": 4e5, "threshold": 0.3},
        {"prompt": "ab", "layer_cap": 1, "expert_cap": 1, "priority": 1},
    ]

    async def main():
        async with TestClient(TestServer(server.app())) as client:

            async def one(body):
                response = await client.post("/generate", json=body)
                return response.status, response.headers.get("Content-Type", ""), await response.text()

            answers = await asyncio.gather(*(one(r) for r in requests))  # more requests than slots
            metrics = await (await client.get("/metrics")).text()
            health = await (await client.get("/healthz")).json()
            return answers, metrics, health

    answers, metrics, health = asyncio.run(main())
    late = {"ttft": 0, "tpot": 0}  # answers over the server's SLAs, which /metrics counts
    flops = {"decode": 0.0, "prefill": 0.0, "after_first": 0}  # what the answers report, which /metrics sums
    for request, (status, kind, body) in zip(requests, answers, strict=True):
        assert status == 200, body
        limits = {k: v for k, v in request.items() if k not in ("prompt", "stream", "priority")}
        want = _want(decoder, request["prompt"], **limits)
        if request.get("stream"):
            assert kind.startswith("text/event-stream")
            events = _events(body)
            *tokens, done = events
            assert [e["token"] for e in tokens] == want and [e["index"] for e in tokens] == list(range(len(want)))
            assert "".join(e["text"] for e in tokens) == byte_vocab.decode(np.array(want)).decode("utf-8", "replace")
        else:
            done = json.loads(body)
            assert done["tokens"] == want
        assert done["done"] and done["status"] == "ok" and done["count"] == len(want)
        assert done["ttft_ms"] > 0 and (done["tpot_ms"] is None) == (len(want) == 1)
        late["ttft"] += done["ttft_ms"] > health["ttft_ms"]
        late["tpot"] += done["tpot_ms"] is not None and done["tpot_ms"] > health["tpot_ms"]
        on_time = done["ttft_ms"] <= health["ttft_ms"] and (done["tpot_ms"] or 0) <= health["tpot_ms"]
        assert done["within_sla"] is on_time  # what happened, whatever admission predicted
        assert done["within_budget"] is (True if "flops_budget" in request else None)
        flops["decode"] += done["flops"]
        flops["prefill"] += done["prefill_flops"]
        flops["after_first"] += done["count"] - 1
        if "flops_budget" in request:
            assert done["flops"] <= request["flops_budget"]
    assert slots.traces == {"prefill": 1, "step": 1}
    assert 'adaptive_lm_requests_total{status="ok"} 5' in metrics
    assert "adaptive_lm_ttft_ms_count 5" in metrics and "adaptive_lm_tpot_ms_bucket" in metrics
    assert "adaptive_lm_budget_adherence 1.0" in metrics and "adaptive_lm_slots 2" in metrics
    assert f"adaptive_lm_ttft_over_sla_total {late['ttft']}\n" in metrics
    assert f"adaptive_lm_tpot_over_sla_total {late['tpot']}\n" in metrics
    gauge = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("adaptive_lm")}
    assert gauge["adaptive_lm_decode_flops_total"] == pytest.approx(flops["decode"], abs=0.1) and flops["decode"] > 0
    assert gauge["adaptive_lm_prefill_flops_total"] == pytest.approx(flops["prefill"], abs=0.1)
    per_token = flops["decode"] / flops["after_first"]
    assert gauge["adaptive_lm_decode_flops_per_token"] == pytest.approx(per_token, abs=0.1)
    assert health["slots"] == 2 and health["slots_in_use"] == 0 and health["kind"] == "language_model"


BAD = [
    ({"prompt": "x", "treshold": 0.5}, 400, "unknown field 'treshold'"),
    ({"prompt": "x" * 40}, 413, "the prompt is 40 bytes; this model takes up to 7"),
    ({"prompt": "x", "max_new_tokens": 100}, 400, "max_new_tokens=100 is outside"),
    ({"prompt": "x", "threshold": "high"}, 400, '"threshold" must be a finite number'),
    ('{"prompt": "x", "threshold": NaN}', 400, '"threshold" must be a finite number'),
    ({"prompt": "x", "layer_cap": 0}, 400, "layer_cap=0 is outside"),
    ({"prompt": "x", "expert_cap": 3}, 400, "expert_cap=3 is outside [1, 2]"),  # past the router's k, as layers
    ({"prompt": "x", "stream": "yes"}, 400, '"stream" must be true or false'),
    ({"prompt": "x", "mod_bias": 1.0}, 400, '"mod_bias" does not apply to this model: it has no MoD blocks'),
    ({"text": "x"}, 400, 'with "prompt"'),
    ("{not json", 400, "the body is not JSON"),
    ('{"prompt": "ab\\ud800"}', 400, '"prompt" is not valid Unicode: a lone surrogate at character 2'),
    ('{"prompt": "x", "max_new_tokens": 1' + "0" * 400 + "}", 400, "max_new_tokens=inf is outside [1, 8]"),
    ({"prompt": "x", "max_new_tokens": 2.5}, 400, '"max_new_tokens" must be an integer; got 2.5'),
]


def test_bad_generate_requests_get_one_line_and_the_server_goes_on(decoder):
    server, _ = _server(decoder, 1)

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            answers = []
            for body, _, _ in BAD:
                data = body if isinstance(body, str) else json.dumps(body)
                bad = await client.post("/generate", data=data, headers={"Content-Type": "application/json"})
                answers.append((bad.status, (await bad.json())["error"]))
            good = await client.post("/generate", json={"prompt": "ok", "max_new_tokens": 2.0})  # 2.0 is an integer
            lost, wrong = await client.post("/predict", json={}), await client.get("/generate")
            routing = [(r.status, (await r.json())["error"], r.headers.get("Allow")) for r in (lost, wrong)]
            return answers, good.status, routing, await (await client.get("/metrics")).text()

    answers, good, routing, metrics = asyncio.run(main())
    for (body, status, message), (got, error) in zip(BAD, answers, strict=True):
        assert got == status and message in error and "\n" not in error, body
    assert good == 200
    assert routing == [
        (404, "nothing is served at '/predict'; GET /openapi.json lists what is", None),
        (405, "GET is not allowed on '/generate'; use POST", "POST"),
    ]
    assert 'adaptive_bad_requests_by_code_total{code="404"} 1' in metrics
    assert 'adaptive_bad_requests_by_code_total{code="405"} 1' in metrics
    assert 'adaptive_bad_requests_by_code_total{code="400"} 13' in metrics
    assert 'adaptive_bad_requests_by_code_total{code="413"} 1' in metrics


def test_under_a_tpot_no_step_can_meet_every_slot_runs_at_the_loosest_rung_and_says_so(decoder):
    server, _ = _server(decoder, 2, tpot_ms=1e-6, meta=LOOSE)  # any step breaks it

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            bodies = [{"prompt": p, "max_new_tokens": 6, "threshold": 2.0} for p in ("def f(", "import")]
            responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
            return [await r.json() for r in responses]

    for answer in asyncio.run(main()):
        assert answer["status"] == "degraded" and answer["degraded_tokens"] == answer["count"] - 1
        assert answer["within_sla"] is False  # degraded as far as it goes, and still over the TPOT
        # after the first token (the prompt's prefill, at the request's own limits): one block, one expert
        assert all(layers == 1 for layers in answer["layers"][1:]) and answer["layers"][0] == 4
        assert all(experts <= 1 for experts in answer["experts"][1:])


def test_a_shedding_server_rejects_what_cannot_start_in_time_and_finishes_what_it_started(decoder):
    server, _ = _server(decoder, 1, ttft_ms=1e-6, policy="shed")  # a wait of any length is too long

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            bodies = [{"prompt": "ab", "max_new_tokens": 8, "stream": i == 0} for i in range(4)]
            responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
            return [(r.status, await r.text()) for r in responses], await (await client.get("/metrics")).text()

    answers, metrics = asyncio.run(main())
    codes = [status for status, _ in answers]
    streamed = _events(answers[0][1])[-1]
    assert codes[0] == 200 and streamed["status"] == "ok"  # the one streaming: never dropped
    assert streamed["within_sla"] is False  # admitted to an empty server, its first token still came late
    assert 503 in codes and all(json.loads(body)["status"] == "rejected" for code, body in answers if code == 503)
    reasons = {json.loads(body)["reason"] for code, body in answers if code == 503}
    assert all("past the 1e-06 ms TTFT SLA: no free slot" in reason for reason in reasons), reasons
    assert f'adaptive_lm_requests_total{{status="rejected"}} {codes.count(503)}' in metrics


def test_a_burst_past_the_queue_fills_the_free_slots_first_and_defers_the_rest_for_a_token_or_more(decoder):
    server, _ = _server(decoder, 2)  # 2 free slots, then 1 place in the queue
    server.max_waiting = 1

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            body = {"prompt": "ab", "max_new_tokens": 8}
            responses = await asyncio.gather(*(client.post("/generate", json=body) for _ in range(6)))
            return [(r.status, await r.json(), r.headers.get("Retry-After")) for r in responses]

    answers = asyncio.run(main())
    served = [a for status, a, _ in answers if status == 200]
    deferred = [(a, header) for status, a, header in answers if status == 503]
    assert len(served) >= 3 and len(served) + len(deferred) == 6, answers  # not deferred while a slot is free
    for answer, header in deferred:
        assert answer["status"] == "deferred" and answer["retry_after_ms"] >= 500.0  # at least the TPOT SLA
        assert int(header) >= 1


def test_requests_are_told_apart_by_identity_not_by_their_fields(decoder):
    """The waiting list is re-sorted while a prefill runs (a priority 0 request jumps ahead), so
    removing one compares it with others: field by field, prompts of other lengths raised."""
    from adaptive.serving.lm_flight import InFlight
    from adaptive.serving.lm_http_input import GenerateInput

    engine = LMEngine(SlotDecoder.of(decoder, 1))
    flights = [
        InFlight(GenerateInput(np.arange(n, dtype=np.int32), {}, engine.limits(), 0, False), 0.0, asyncio.Queue())
        for n in (3, 5, 5)
    ]
    waiting = list(flights)
    waiting.remove(flights[2])
    assert waiting == flights[:2] and flights[1] != flights[2]


def test_a_failed_prefill_answers_its_request_and_the_server_goes_on(decoder, monkeypatch):
    server, engine = _server(decoder, 1, policy="static")
    join, calls = engine.join, []

    def fails_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return join(*args)

    monkeypatch.setattr(engine, "join", fails_once)

    async def main():
        async with TestClient(TestServer(server.app())) as client:
            failed = await client.post("/generate", json={"prompt": "ab", "max_new_tokens": 2})
            good = await client.post("/generate", json={"prompt": "ab", "max_new_tokens": 2})
            return failed.status, await failed.json(), good.status

    status, failed, good = asyncio.run(asyncio.wait_for(main(), 120))  # a hang fails, not blocks
    assert status == 500 and failed["status"] == "error" and "device lost" in failed["error"]
    assert good == 200


def test_a_warmed_engine_serves_without_compiling(decoder):
    from tests.test_slots import _run_through_slots

    engine = LMEngine(SlotDecoder.of(decoder, 2), name="tiny")
    engine.warm()
    before = COMPILES["count"]
    prompts = [byte_vocab.encode(t, eos=False) for t in (b"def f(", b"import", b"x = [")]  # <= 8 tokens
    _run_through_slots(engine, prompts, [dict(threshold=0.5, max_new_tokens=5), dict(seed=2), dict(layer_cap=1)])
    assert COMPILES["count"] == before


def test_an_engine_whose_artifact_makes_one_new_token_warms_and_serves(decoder):
    from adaptive.inference.generate import Decoder

    one = Decoder(
        decoder.graphdef, decoder.params, decoder.flops, prompt_capacity=decoder.prompt_capacity, new_capacity=1
    )
    engine = LMEngine(SlotDecoder.of(one, 2), name="one-token")
    engine.warm()  # asked for 4 new tokens, which a capacity of 1 refuses
    assert len(engine.warmup) == 2 and sorted(engine.free) == [0, 1] and not engine.active
    token = engine.join(byte_vocab.encode(b"ab", eos=False), engine.limits(max_new_tokens=1))
    assert token.token == _want(one, "ab", max_new_tokens=1)[0] and token.stop != "running" and not engine.active


def test_answers_over_the_slas_are_counted():
    from adaptive.serving.lm_server_stats import LMStats

    stats = LMStats(ttft_sla_ms=10.0, tpot_sla_ms=2.0)
    for ttft, tpot in [(5.0, 1.0), (10.0, 2.0), (29.6, None), (11.0, 3.5)]:  # at the SLA is on time
        stats.finished("ok", ttft, tpot, None)
    for status in ("error", "cancelled"):  # cut short: their answers carry no within_sla, nor do the counters
        stats.finished(status, 50.0, 9.0, None)
    text = stats.prometheus(0, 2, 0)
    assert "adaptive_lm_ttft_over_sla_total 2\n" in text and "adaptive_lm_tpot_over_sla_total 1\n" in text
    assert "adaptive_lm_ttft_ms_count 6\n" in text  # their latencies are still observed


def test_the_token_rate_counts_the_last_window_only():
    from adaptive.serving.lm_server_stats import TokenRate

    rate = TokenRate(window_s=2.0)
    for t in range(10):  # 3 tokens at t = 0, 1, ..., 9 s
        rate.add(3, now=float(t))
    assert rate.rate(now=9.0) == 9 / 2.0  # t = 7, 8, 9 are within 2 s of 9
    assert rate.rate(now=10.5) == 3 / 2.0  # only t = 9 left
    assert rate.rate(now=20.0) == 0.0 and not rate.events
    rate.add(4, now=20.0)
    assert rate.rate(now=20.0) == 2.0


def test_a_quantized_or_pruned_point_served_at_the_certified_threshold_is_said_uncertified():
    from adaptive.serving.launch import uncertified_point

    certified = {"exit_threshold": {"calibrated": {"threshold": 0.13}, "default": 0.13}}
    assert "point int4, prune 0.5 are not certified" in uncertified_point(certified, ("int4", 0.5))
    assert uncertified_point(certified, ("fp32", 0.0)) is None and uncertified_point(certified, None) is None
    configured = {"exit_threshold": {"calibrated": None, "default": 0.9}}  # no certificate to misread
    assert uncertified_point(configured, ("int8", 0.0)) is None
    none = {"exit_threshold": {"calibrated": {"threshold": 2.0}, "default": 2.0}}  # none certified: no exits
    assert uncertified_point(none, ("int8", 0.0)) is None


def test_a_limit_the_model_cannot_apply_is_named_with_the_reason():
    plain = not_applicable({"lm": {"exits": False, "mod_capacity": 0.0}, "moe": {"enabled": False}}, 4)
    assert plain == {
        "threshold": "it has no exits (lm.exits=false)",
        "expert_cap": "it has no experts (moe.enabled=false)",
        "mod_bias": "it has no MoD blocks (lm.mod_capacity=0)",
    }
    every = {"lm": {"exits": True, "mod_capacity": 0.5, "mod_every": 2}, "moe": {"enabled": True}}
    assert not_applicable(every, 4) == {}
    # one block: no exit before the last, and a MoD block every second one is none
    assert not_applicable(every, 1) == {
        "threshold": "it has no exits (one block: no exit before the last)",
        "mod_bias": "it has no MoD blocks (lm.mod_every=2 is past its 1 blocks)",
    }


def test_fuzzed_generate_requests_get_what_the_openapi_document_says_and_never_a_500(decoder):
    server, _ = _server(decoder, 2, policy="static")
    loop = asyncio.new_event_loop()
    client = TestClient(TestServer(server.app()), loop=loop)
    loop.run_until_complete(client.start_server())
    document = loop.run_until_complete(loop.run_until_complete(client.get("/openapi.json")).json())
    generate = document["paths"]["/generate"]["post"]
    request_schema = generate["requestBody"]["content"]["application/json"]["schema"]
    assert set(request_schema["properties"]) & set(NOT_APPLICABLE) == set()  # what it cannot apply, it does not offer
    seen: dict[int, int] = {}

    async def send(body: bytes, content_type: str | None):
        headers, skip = ({"Content-Type": content_type}, []) if content_type else ({}, ["Content-Type"])
        response = await client.post("/generate", data=body, headers=headers, skip_auto_headers=skip)
        return response.status, response.headers.get("Content-Type", ""), await response.text()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(requests(request_schema, unknown=("extra", *NOT_APPLICABLE)))
    def one(request):
        status, kind, text = loop.run_until_complete(send(*request))
        seen[status] = seen.get(status, 0) + 1
        answer = _events(text)[-1] if kind.startswith("text/event-stream") else json.loads(text)
        assert str(status) in generate["responses"] and status != 500, (repr(request)[:200], status, answer)
        assert matches(answer, generate["responses"][str(status)]["content"]["application/json"]["schema"]), answer
        assert "error" not in answer or "\n" not in answer["error"], answer
        assert status != 200 or acceptable(*request, request_schema), ("accepted what the document refuses", request)

    try:
        one()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert seen.get(200, 0) >= 20 and seen.get(400, 0) >= 20, seen
