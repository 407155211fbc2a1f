"""Compiled memory of parity's Sparse Universal Transformer at each precision, batch 16.

The experiment's memory column, recomputed for the SUT on a freshly initialised model of its
config (memory depends on shapes, not values): the compiled inference with its weights baked in
as an artifact holds them, `compiled.memory_analysis()` plus the weights' bytes, as
`adaptive.evaluation.variant_timing` reports it for a trained run.

    python experiments/quantize_prune/sut_memory.py --json experiments/quantize_prune/sut_memory.json
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.memory import memory_report
from adaptive.config import step_cap
from adaptive.inference.export import serving_function
from adaptive.nn.models import build_model
from adaptive.nn.quantize import quantize_model, weight_bytes

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cfg = config_lib.load("configs/sut.py", [f"--config.data.data_dir={folder}"])
        spec = data.prepare(cfg.data)
    graphdef, params = nnx.split(build_model(cfg, spec), nnx.Param)
    x = jnp.ones((BATCH, *spec.input_shape), jnp.float32)
    budget = jnp.full((BATCH,), step_cap(cfg), jnp.int32)
    rows = []
    for precision in ("fp32", "bf16", "int8", "int4"):
        g, p = quantize_model(graphdef, params, precision)
        compiled = jax.jit(serving_function(g, p)).lower(x, budget).compile()
        rows.append({"precision": precision, "batch": BATCH, **memory_report(compiled, weight_bytes(p))})
    for row in rows:
        row["memory_mb_ratio"] = round(row["total"] / rows[0]["total"], 4)
        print(row)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
