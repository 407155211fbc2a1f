"""The generation benchmark's arithmetic: what counts as a violation, agreement, goodput."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.bench.lm_loadgen import requests_of, summarize


def _record(status, scheduled, times, tokens, flops=10.0, decode_flops=6.0):
    return {"status": status, "scheduled": scheduled, "times": times, "tokens": tokens, "layers": [4.0] * len(tokens),
            "flops": flops, "decode_flops": decode_flops, "model": "primary"}  # fmt: skip


def test_violations_count_late_first_tokens_slow_tokens_and_every_unanswered_request():
    records = [
        _record("ok", 0.0, [0.1, 0.11, 0.12], [1, 2, 3]),  # on time: TTFT 100 ms, TPOT 10 ms
        _record("ok", 0.0, [0.9, 0.91], [1, 2]),  # first token late
        _record("degraded", 0.0, [0.1, 0.2, 0.3], [1, 9, 9]),  # tokens too slow (TPOT 100 ms)
        _record("rejected", 0.0, [], []),
        _record("error", 0.0, [], []),
    ]
    reference = [[1, 2, 3], [1, 2], [1, 2, 3], [1], [1]]
    m = summarize(records, reference, ttft_ms=500, tpot_ms=50, duration_s=2.0)
    assert m["sent"] == 5 and m["count_ok"] == 2 and m["count_rejected"] == 1 and m["count_error"] == 1
    assert m["violation_rate"] == pytest.approx(4 / 5)
    assert m["goodput_tokens_per_s"] == pytest.approx(3 / 2.0)  # only the first request's tokens count
    assert m["agreement"] == pytest.approx((1 + 1 + 1 / 3) / 3)  # over the answered requests
    assert m["agreement_weighted_goodput"] == pytest.approx(3 / 2.0)
    assert m["ttft_p50_ms"] == pytest.approx(100.0)
    # prefills included, per token generated (8 tokens); decode alone, per token after each first (5)
    assert m["flops_per_token"] == pytest.approx(50 / 8) and m["decode_flops_per_token"] == pytest.approx(30 / 5)


def test_a_short_answer_disagrees_where_it_has_no_token():
    records = [_record("ok", 0.0, [0.1], [1])]
    assert summarize(records, [[1, 2, 3, 4]], ttft_ms=500, tpot_ms=50, duration_s=1.0)["agreement"] == 0.25


def test_every_policy_gets_the_same_requests_at_one_seed():
    prompts = [np.arange(40, 80, dtype=np.int32), np.arange(50, 70, dtype=np.int32)]
    a = requests_of(prompts, "spike", 20.0, 3.0, seed=1, new_tokens=32)
    b = requests_of(prompts, "spike", 20.0, 3.0, seed=1, new_tokens=32)
    assert np.array_equal(a[0], b[0]) and [(p, len(t), n) for p, t, n, _ in a[1]] == [
        (p, len(t), n) for p, t, n, _ in b[1]
    ]
    assert all(8 <= len(t) <= len(prompts[p]) and 4 <= n <= 32 for p, t, n, _ in a[1])


def test_a_one_token_answer_has_no_tpot_and_does_not_violate_it():
    records = [_record("ok", 0.0, [0.1], [1]), _record("ok", 0.0, [0.1, 0.3], [1, 2])]
    m = summarize(records, [[1], [1, 2]], ttft_ms=500, tpot_ms=50, duration_s=1.0)
    assert m["violation_rate"] == 0.5  # only the second: 200 ms between its tokens
    assert m["tpot_p50_ms"] == pytest.approx(200.0)  # the one-token answer is not a 0 ms TPOT
