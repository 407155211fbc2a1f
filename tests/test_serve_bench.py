"""`adaptive bench serve`'s rows from repeated runs: means with t-intervals cut to [0, 1],
rejections counted as wrong and as violations; and the whole benchmark end to end, tiny."""

import json

import numpy as np
import pytest

from adaptive.bench.serve_summary import pattern_row


def _run(statuses: list[str], latency_ms: float, correct: bool = True) -> dict:
    records = [
        {"scheduled": 0.0, "done": latency_ms / 1e3, "status": s, "prediction": 1 if correct else 0, "steps": 1}
        for s in statuses
    ]
    return {"records": records, "labels": [1] * len(statuses)}


def test_a_pattern_row_counts_rejections_as_wrong_and_as_violations():
    runs = [_run(["ok"] * 8 + ["rejected"] * 2, 5.0), _run(["ok"] * 10, 5.0), _run(["ok"] * 10, 50.0)]
    row = pattern_row(runs, sla_ms=20.0, duration_s=1.0, flops={"primary": [1.0]})
    assert row["repeats"] == 3 and row["effective_accuracy_runs"] == [0.8, 1.0, 0.0]
    assert row["sla_violation_rate_runs"] == pytest.approx([0.2, 0.0, 1.0])  # late answers violate too
    # The mean over runs with its t-interval (t(0.975, 2) = 4.303), cut to [0, 1].
    half = 4.3027 * np.std([0.8, 1.0, 0.0], ddof=1) / np.sqrt(3)
    assert row["effective_accuracy"] == pytest.approx(0.6) and half > 0.6
    assert (row["effective_accuracy_lo"], row["effective_accuracy_hi"]) == (0.0, 1.0)
    assert row["rejected_fraction"] == pytest.approx(2 / 30) and row["count_rejected"] == 2 and row["sent"] == 30
    assert row["p50_ms"] == pytest.approx(5.0) and row["p99_ms"] == pytest.approx(50.0)  # answered ones, pooled
    assert row["accuracy"] == 1.0  # of the answers: rejections are no answers
    mild = [_run(["ok"] * (10 - n) + ["rejected"] * n, 5.0) for n in (1, 2, 3)]
    spread = pattern_row(mild, sla_ms=20.0, duration_s=1.0, flops={"primary": [1.0]})
    half = 4.3027 * 0.1 / np.sqrt(3)  # sd 0.1 over 3 runs
    lo_hi = [spread[f"{key}_{end}"] for key in ("effective_accuracy", "sla_violation_rate") for end in ("lo", "hi")]
    assert lo_hi == pytest.approx([0.8 - half, 1.0, 0.0, 0.2 + half], abs=1e-4)
    one = pattern_row(runs[:1], sla_ms=20.0, duration_s=1.0, flops={"primary": [1.0]})
    assert one["effective_accuracy"] == pytest.approx(0.8) and one["effective_accuracy_lo"] is None  # no spread


@pytest.mark.slow
def test_the_tiny_serving_benchmark_runs_end_to_end(tmp_path):
    """Tiny artifacts, 1 s of load per pattern and repeat, three of the policies (a queueing
    baseline, a shedding one, the controller; experiments/serving/run.sh --tiny runs them all):
    every policy x pattern has its row, every request sent is accounted for, the plots are written."""
    from adaptive.bench import serve
    from adaptive.bench.loadgen import PATTERNS
    from adaptive.inference.export import export_run
    from tests.helpers import train_tiny

    train_tiny(tmp_path / "run", 20)
    art = export_run(tmp_path / "run", tmp_path / "art")
    out = tmp_path / "bench"
    policies = ["static full depth", "adaptive, budget 2 + shedding", "adaptive + controller + fallback"]
    rows = serve.run(
        str(art), str(art), sla_ms=50.0, rate=None, duration=10.0, fixed_budget=2, out_dir=str(out),
        json_out=str(out / "serve.json"), max_batch=8, repeats=2, tiny=True, policies=policies,
    )  # fmt: skip
    assert json.loads((out / "serve.json").read_text()) == json.loads(json.dumps(rows))
    assert [(r["policy"], r["pattern"]) for r in rows] == [(p, pattern) for p in policies for pattern in PATTERNS]
    for r in rows:
        assert r["repeats"] == 2 and r["rate_rps"] == serve.TINY_RATE
        assert 0 <= r["effective_accuracy_lo"] <= r["effective_accuracy"] <= r["effective_accuracy_hi"] <= 1
        assert sum(v for k, v in r.items() if k.startswith("count_")) == r["sent"] > 0
        assert r["rejected_fraction"] == r["count_rejected"] / r["sent"]
        assert np.isfinite(r["p50_ms"]) or r["count_rejected"] == r["sent"]
    assert (out / "latency_cdf.png").exists() and (out / "budget_over_time.png").exists()


def test_the_load_generator_never_sends_before_a_requests_time():
    """uvloop's timers count whole milliseconds and its loop.time() is read once a turn: the load
    generators time on a microsecond clock and sleep until a request's time, never short of it."""
    import uvloop

    from adaptive.bench.loadgen import clock, sleep_until

    async def sends():
        start, woke = clock(), []
        for k in range(1, 9):
            await sleep_until(start + 0.0003 * k)  # 0.3 ms apart: inside one of uvloop's ticks
            woke.append(clock() - start)
        return woke

    woke = uvloop.run(sends())
    assert all(t >= 0.0003 * k for k, t in enumerate(woke, start=1)), woke
