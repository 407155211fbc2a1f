"""`adaptive bench depth` end to end on a tiny model: its rows, and its three loops agree."""

import math

import jax.numpy as jnp
import pytest
from flax import nnx

from adaptive.bench import depth


def test_bench_depth_times_the_three_loops_of_the_mixed_row_with_the_same_answers(tmp_path):
    # _mixed_row asserts that the compacted, whole-batch and host-side chains answer bitwise alike
    rows = depth.run(
        kind="mlp", hidden=16, cap=6, depths=[2], batches=[1, 16], repeats=2, n_in=8, json_out=str(tmp_path / "d.json")
    )
    assert [(r["batch"], r["d"], r["mixed"]) for r in rows[:3]] == [
        (1, 2, False),
        (16, 2, False),
        (16, rows[2]["d"], True),
    ]
    mixed = rows[2]
    assert 1 <= mixed["d"] <= mixed["d_max"] <= 6  # numbers in JSON; the table shows "mixed(mean 3.2, max 4)"
    below, above = mixed["static_depths"]
    assert above - below in (0, 1) and 1 <= below <= 6
    for key in ("adaptive_ms", "whole_batch_ms", "host_chain_ms", "static_ms", "slowest_ms"):
        assert mixed[key] > 0
    assert (tmp_path / "d.json").exists()
    assert mixed["rounds"] == 1 and "ratio_low" not in mixed


def test_rounds_give_every_ratio_and_its_interval(tmp_path):
    rows = depth.run(kind="mlp", hidden=16, cap=4, depths=[1], batches=[16], repeats=2, n_in=8, json_out=None, rounds=3)
    mixed = rows[-1]
    for name in ("ratio", "whole_batch_ratio", "host_chain_ratio"):
        values = mixed[f"{name}_rounds"]
        assert len(values) == 3 and mixed[name] == sorted(values)[1]  # the median round
        # the interval of the geometric mean, computed on log ratios: above 0 however the rounds scatter
        geometric = math.exp(sum(math.log(v) for v in values) / 3)
        assert 0 < mixed[f"{name}_low"] <= geometric <= mixed[f"{name}_high"]


def test_a_static_model_has_no_halting_loop():
    graphdef, params = depth._model("mlp", 8, "none", 2, 4)
    with pytest.raises(ValueError, match="no halting loop"):
        nnx.merge(graphdef, params).infer_loop(jnp.zeros((2, 4)), jnp.ones((2,), jnp.int32))
