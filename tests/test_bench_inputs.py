"""What `adaptive bench ...` does with its flags and its numbers before and after timing: one-line
errors naming the flag, defaults that follow other flags and show in --help, a line saying what
each ratio divides by, and no impossible number printed as if it were a measurement."""

from __future__ import annotations

import argparse
import json
import math
from types import SimpleNamespace

import pytest

from adaptive.cli.main import main
from adaptive.cli.parser import build_parser


def _bench_parsers() -> dict[str, argparse.ArgumentParser]:
    def subparsers(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    return subparsers(subparsers(build_parser())["bench"])


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_bench_flag_with_a_default_shows_it_in_help():
    parsers = _bench_parsers()
    assert set(parsers) == {"depth", "act-train", "serve", "serve-lm", "moe", "lm", "generate", "quant"}
    for name, parser in parsers.items():
        text = _flat(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            assert action.help and (f"(default: {action.default})" in text or "default" in action.help), (
                f"bench {name} {action.option_strings[0]} hides its default"
            )


def test_help_says_what_a_flag_needs_of_another():
    helps = {name: " ".join(a.help or "" for a in p._actions) for name, p in _bench_parsers().items()}
    assert "a multiple of its 4 heads" in helps["depth"] and "up to --cap" in helps["depth"]
    assert "at least 2" in helps["act-train"] and "2 to 4096" in helps["act-train"]
    assert "relative" in helps["serve"]
    assert "(default: runs/bench-serve)" in _flat(_bench_parsers()["serve"].format_help())
    assert "bench serve-lm" in helps["serve"]
    assert "without it or --small-point the 'controller + fallback' policy is left out" in helps["serve-lm"]
    assert "halfway between 1 and the blocks" in helps["generate"]


def test_the_heads_named_in_help_are_the_configs():
    from adaptive.cli.bench_parser import TRANSFORMER_HEADS
    from adaptive.config import ModelConfig

    assert TRANSFORMER_HEADS == ModelConfig().num_heads


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["depth", "--kind", "transformer", "--hidden", "15", "--cap", "4", "--depths", "1"],
            "--hidden 15 is not a multiple of the transformer's 4 heads",
        ),
        (["act-train", "--n", "1"], "--n 1 must be in [2, 4096] (the parity length)"),
        (["generate", "--layers", "2", "--depth", "0.5"], "--depth 0.5 must be at least 1"),  # was a traceback
        (["act-train", "--n", "5000"], "--n 5000 must be in [2, 4096] (the parity length)"),
        # the bad --precisions is named, not the depth past --layers
        (["generate", "--layers", "2", "--depth", "3", "--precisions", "fp16"], "--precisions 'fp16'"),
    ],
)
def test_bad_bench_flags_are_one_line_naming_the_flag(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"adaptive: error: {message}" or (line.startswith("adaptive: error: ") and message in line)
    assert "config key" not in line


def _checked(argv: list[str]):
    from adaptive.cli.bench_command import _check_flags_against_each_other

    args = build_parser().parse_args(["bench", *argv])
    _check_flags_against_each_other(args)
    return args


def test_default_depths_follow_cap_and_default_depth_follows_layers():
    assert _checked(["depth"]).depths == [1, 2, 4, 8, 16]
    assert _checked(["depth", "--cap", "4"]).depths == [1, 2, 4]
    assert _checked(["depth", "--cap", "3"]).depths == [1, 2]
    assert _checked(["depth", "--cap", "4", "--depths", "3"]).depths == [3]
    assert _checked(["generate"]).depth == 2.5
    assert _checked(["generate", "--layers", "2"]).depth == 1.5
    assert _checked(["generate", "--layers", "1"]).depth == 1.0
    assert _checked(["generate", "--workdir", "W"]).depth is None  # from the run's own blocks, in generate.run


def test_act_train_refuses_its_flags_before_either_loop_runs(monkeypatch):
    from adaptive.bench import act_train
    from adaptive.config import ConfigError

    def never(*args, **kwargs):
        raise AssertionError("a loop ran")

    monkeypatch.setattr(act_train, "bare_steps_per_sec", never)
    with pytest.raises(ConfigError, match="--steps 1: a rate needs at least 2 timed steps"):
        act_train.run(n=4, steps=1, json_out=None)
    with pytest.raises(ConfigError, match=r"--n 1 \(the config's data.parity_n\)"):
        act_train.run(n=1, steps=10, json_out=None)


def test_act_train_says_what_its_ratio_divides_by(monkeypatch, capsys):
    from adaptive.bench import act_train

    monkeypatch.setattr(act_train, "bare_steps_per_sec", lambda n, steps: 200.0)
    monkeypatch.setattr(act_train, "framework_steps_per_sec", lambda n, steps, cfg: 100.0)
    (row,) = act_train.run(n=4, steps=10, json_out=None)
    out = capsys.readouterr().out
    assert row["ratio"] == 0.5
    assert "ratio = framework_steps_per_sec / bare_jax_steps_per_sec" in out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["n"])
    assert header.split() == list(row)  # the columns are the JSON keys


def test_a_ratio_interval_stays_above_zero_and_needs_three_rounds():
    from adaptive.bench.results import ratio_interval
    from adaptive.evaluation.intervals import mean_interval

    scattered = [0.1, 5.0, 0.2]
    assert mean_interval(scattered).low < 0  # what an interval over the ratios themselves gives
    low, high = ratio_interval(scattered)
    assert 0 < low < math.exp(sum(map(math.log, scattered)) / 3) < high
    assert ratio_interval([1.0, 1.1]) == (None, None) and ratio_interval([1.2]) == (None, None)


def _fake_timings(values: dict[str, list[float]]):
    """A stand-in for time_side_by_side: each name's next value in turn (round after round)."""
    calls = {"n": 0}

    def fake(fns, *, repeats):
        i = calls["n"]
        calls["n"] += 1
        return {name: values[name][i % len(values[name])] if name in values else 1.0 for name in fns}

    return fake


def test_bench_depth_writes_no_impossible_number(monkeypatch, tmp_path, capsys):
    """The static model timed slower than the whole-batch loop: waiting_fraction would be negative,
    so it is null with a warning; 2 rounds give no interval, and say why; d stays a number."""
    from adaptive.bench import depth

    monkeypatch.setattr(
        depth,
        "time_side_by_side",
        _fake_timings(
            {
                "adaptive": [0.3, 0.1],
                "static": [0.2],
                "whole_batch": [0.1, 0.12],
                "host_chain": [0.5],
                "static_below": [0.2],
                "static_above": [0.25],
                "slowest": [0.3],
            }
        ),
    )
    out = tmp_path / "d.json"
    rows = depth.run(
        kind="mlp", hidden=8, cap=2, depths=[1], batches=[4], repeats=1, n_in=4, json_out=str(out), rounds=2
    )
    captured = capsys.readouterr()
    mixed = json.loads(out.read_text())[-1]
    assert mixed["mixed"] is True and isinstance(mixed["d"], float) and isinstance(mixed["d_max"], int)
    assert rows[0]["mixed"] is False and rows[0]["d"] == 1
    assert mixed["waiting_fraction"] is None
    assert "waiting_fraction" in captured.err and "timings are noise at these settings" in captured.err
    for name in ("ratio", "whole_batch_ratio", "host_chain_ratio"):
        assert mixed[f"{name}_low"] is None and mixed[f"{name}_high"] is None
        assert len(mixed[f"{name}_rounds"]) == 2
    assert "too few rounds for an interval" in mixed["interval_note"]
    assert "too few rounds for an interval" in captured.out
    assert "ratio = adaptive_ms / static_ms" in captured.out and "medians" in captured.out
    assert "mixed(mean " in captured.out  # the table shows text where JSON has numbers
    header = next(line for line in captured.out.splitlines() if line.split()[:2] == ["kind", "hidden"])
    assert header.split() == depth.COLUMNS and set(depth.COLUMNS) - {"ratio_95%"} <= set(mixed)


def test_bench_depth_intervals_over_scattered_rounds_stay_above_zero(monkeypatch, capsys):
    from adaptive.bench import depth

    monkeypatch.setattr(
        depth,
        "time_side_by_side",
        _fake_timings({"adaptive": [0.01, 0.5, 0.02, 0.4], "whole_batch": [0.01, 0.9, 0.5], "static_below": [0.1]}),
    )
    rows = depth.run(kind="mlp", hidden=8, cap=2, depths=[1], batches=[4], repeats=1, n_in=4, json_out=None, rounds=3)
    mixed = rows[-1]
    for name in ("ratio", "whole_batch_ratio", "host_chain_ratio"):
        assert 0 < mixed[f"{name}_low"] <= mixed[name] <= mixed[f"{name}_high"]
    assert "interval_note" not in mixed
    assert f"[{mixed['ratio_low']:.3g}, {mixed['ratio_high']:.3g}]" in capsys.readouterr().out  # in the table too


def test_bench_depth_warns_where_a_deeper_static_model_is_faster(monkeypatch, capsys):
    from adaptive.bench import depth

    monkeypatch.setattr(depth, "time_side_by_side", _fake_timings({"static": [0.5, 0.1], "adaptive": [0.5]}))
    depth.run(kind="mlp", hidden=8, cap=2, depths=[1, 2], batches=[1], repeats=1, n_in=4, json_out=None)
    assert "static depth 2 timed faster than depth 1" in capsys.readouterr().err


def test_bench_generate_warns_where_a_deeper_static_model_is_faster(capsys):
    from adaptive.bench.generate import _check_statics

    per_token = {("static 1", "fp32"): 1.0, ("static 2", "fp32"): 0.03}
    _check_statics(per_token, {"fp32": [1, 2]}, batch=1)
    err = capsys.readouterr().err
    assert "static 2 blocks decoded 33.3x faster than static 1" in err and "use more --repeats" in err
    _check_statics({("static 1", "fp32"): 1.0, ("static 2", "fp32"): 1.8}, {"fp32": [1, 2]}, batch=1)
    assert capsys.readouterr().err == ""


def test_deeper_static_times_are_compared_in_depth_order_skipping_what_did_not_run(capsys):
    from adaptive.bench.results import warn_deeper_faster

    said = lambda d1, ms1, d2, ms2: f"{d2} below {d1}"  # noqa: E731
    warn_deeper_faster([(4, 2.0), (1, 1.0), (2, float("nan")), (3, 0.5)], said)
    assert capsys.readouterr().err.splitlines() == [
        "warning: 3 below 1: timings are noise at these settings (use more --repeats)"
    ]
    warn_deeper_faster([(2, 1.95), (1, 2.0), (3, 3.0)], said)  # within 10%: a wobble, not noise
    assert capsys.readouterr().err == ""


def test_bench_generate_says_which_statics_its_ratios_divide_by(capsys):
    from adaptive.bench import generate

    rows = generate.run(width=16, layers=2, heads=2, batches=(1,), new_tokens=3, repeats=1)
    out = capsys.readouterr().out
    assert {r["variant"] for r in rows} >= {"exit, compacted", "static 1", "static 2"}
    assert "interpolated at its mean_layers between static 1 and static 2" in out and "median" in out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["variant"])
    assert header.split() == generate.COLUMNS


def _serve_row(**extra) -> dict:
    return {"policy": "static full depth", "pattern": "poisson", "rate_rps": 40.0, "sla_ms": 30.0, "repeats": 3,
            "effective_accuracy": 0.9, "effective_accuracy_lo": 0.8, "effective_accuracy_hi": 1.0,
            "sla_violation_rate": 0.1, "sla_violation_rate_lo": None, "sla_violation_rate_hi": None,
            "rejected_fraction": 0.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, **extra}  # fmt: skip


def test_the_serving_tables_say_their_sla_and_rate_and_use_the_json_keys(capsys):
    from adaptive.bench import serve, serve_lm

    serve.print_rows([_serve_row()])
    out = capsys.readouterr().out
    assert "SLA 30 ms, base rate 40 requests/s" in out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["policy"]).split()
    assert set(header) <= set(_serve_row())

    lm_row = {"policy": "full depth", "pattern": "poisson", "rate_rps": 2.0, "ttft_sla_ms": 1000.0,
              "tpot_sla_ms": 50.0, "repeats": 1, "ttft_p99_ms": 5.0, "count_rejected": 0, "count_fallback": 0,
              "mean_layers": 2.0}  # fmt: skip
    for key in serve_lm.HEADLINE:
        lm_row |= {key: 0.5, f"{key}_lo": None, f"{key}_hi": None}
    serve_lm.print_rows([lm_row])
    out = capsys.readouterr().out
    assert "SLA: TTFT 1000 ms, TPOT 50 ms; base rate 2 requests/s" in out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["policy"]).split()
    assert set(header) <= set(lm_row)


def test_bench_serve_points_a_language_models_artifact_to_serve_lm(tmp_path):
    from adaptive.bench import serve
    from adaptive.config import ConfigError
    from adaptive.inference.artifact_meta import LM_FORMAT

    (tmp_path / "lmart").mkdir()
    (tmp_path / "lmart" / "meta.json").write_text(json.dumps({"format": LM_FORMAT}))
    with pytest.raises(ConfigError, match="language model's artifact.*use adaptive bench serve-lm"):
        serve.run(str(tmp_path / "lmart"), None, sla_ms=30.0, rate=None, duration=1.0, fixed_budget=2,
                  out_dir=str(tmp_path / "out"), json_out=None, tiny=True)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_bench_quant_says_how_many_examples_it_scored(capsys):
    from adaptive import config as config_lib
    from adaptive.bench.quant import _scored

    cfg = config_lib.load("configs/parity.py:tiny", [])
    trained = SimpleNamespace(cfg=cfg)
    held = cfg.data.num_eval
    assert _scored(trained, None) == held and _scored(trained, 7) == 7
    assert capsys.readouterr().out == ""
    assert _scored(trained, 100_000) == held
    assert f"--limit 100000 is more than the validation split's {held} examples: scoring all {held}" in (
        capsys.readouterr().out
    )
