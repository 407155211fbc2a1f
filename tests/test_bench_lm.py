"""`adaptive bench lm` end to end on a tiny model: its rows and its calibration."""

import math

import pytest

from adaptive.bench import lm


def test_bench_lm_times_mod_training_and_early_exit_side_by_side(tmp_path):
    rows = lm.run(
        width=16,
        layers=4,
        heads=2,
        length=16,
        batch=2,
        capacity=0.25,
        exit_depths=[1, 2],
        repeats=2,
        json_out=str(tmp_path / "lm.json"),
    )
    variants = [r["variant"] for r in rows]
    assert len(rows) == 3 + 2 * 2 and (tmp_path / "lm.json").exists()
    assert variants[0].endswith("full") and "MoD 0.25" in variants[1] and "dense of equal FLOPs" in variants[2]
    assert rows[0]["ratio"] == 1.0 and all(r["ms"] > 0 and r["tokens"] == 32 for r in rows)
    # every other block at 4 of 16 tokens: (2 + 2 * 0.25) / 4 of the blocks' work
    assert rows[1]["flops_fraction"] == pytest.approx(0.625)
    assert "exit 1" in variants[4] and rows[4]["ratio"] == pytest.approx(rows[4]["ms"] / rows[3]["ms"])


def test_an_exit_depth_past_the_last_exit_is_refused():
    with pytest.raises(ValueError, match="exit depth 4"):
        lm.run(width=16, layers=4, heads=2, length=8, batch=1, capacity=0.25, exit_depths=[4], repeats=1, json_out=None)


def test_bench_generate_times_exit_decoding_against_static_models_of_its_depth(tmp_path):
    from adaptive.bench import generate

    out = tmp_path / "generate.json"
    rows = generate.run(
        width=16,
        layers=3,
        heads=2,
        depth=2.0,
        batches=(2,),
        new_tokens=4,
        repeats=2,
        precisions=("fp32", "bf16"),
        json_out=str(out),
    )
    assert out.exists() and set(rows[0]) == set(generate.COLUMNS)
    assert {r["precision"] for r in rows} == {"fp32", "bf16"}
    for precision in ("fp32", "bf16"):
        exits = {r["variant"]: r for r in rows if r["variant"].startswith("exit") and r["precision"] == precision}
        statics = [r for r in rows if r["variant"].startswith("static") and r["precision"] == precision]
        assert set(exits) == {"exit, compacted", "exit, all rows"} and statics
        for row in exits.values():
            assert 1.0 <= row["mean_layers"] <= 3.0
            # A ratio of two time differences over 3 tokens: its sign is noise on a busy machine
            # (the suite runs two files at once). Where noise left a time <= 0 it is NaN, and so is
            # every ratio read from it (_per_token); otherwise the ratio is a positive number.
            timed = [row["ms_per_token"], *(s["ms_per_token"] for s in statics)]
            if all(math.isfinite(ms) for ms in timed):
                assert math.isfinite(row["ratio"]) and row["ratio"] > 0
            else:
                assert math.isnan(row["ratio"])
            assert row["batch"] == 2 and row["new_tokens"] == 4
        # the static models at the same precision bracket the exit model's realized depth
        depths = sorted(r["mean_layers"] for r in statics)
        assert depths[0] <= exits["exit, compacted"]["mean_layers"] <= depths[-1]
    with pytest.raises(ValueError, match="--depth 5"):
        generate.run(width=16, layers=3, heads=2, depth=5.0, batches=(1,), new_tokens=4, repeats=1)


def test_bench_generate_gives_no_decode_time_where_noise_outweighs_the_steps(capsys):
    """N tokens timed no slower than 1 (a tiny model, noise): NaN with a warning, never a
    negative ms_per_token or a ratio computed from one."""
    import math

    from adaptive.bench.generate import _per_token, _row

    ms = {("static 1", "fp32", "N"): 5.0, ("static 1", "fp32", "1"): 2.0}
    ms |= {("exit, compacted", "fp32", "N"): 1.9, ("exit, compacted", "fp32", "1"): 2.0}
    per_token = _per_token(ms, [("static 1", "fp32"), ("exit, compacted", "fp32")], 4, batch=8)
    assert per_token["static 1", "fp32"] == 1.0 and math.isnan(per_token["exit, compacted", "fp32"])
    err = capsys.readouterr().err
    assert "at batch 8, 4 tokens took no longer than 1 for exit, compacted fp32" in err and "static" not in err
    row = _row("static 1", "fp32", 8, 4, math.nan, 1.0, 1.0)
    assert math.isnan(row["ms_per_token"]) and math.isnan(row["ratio"])
