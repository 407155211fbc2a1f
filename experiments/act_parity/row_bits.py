"""Which row counts give a row different bits than the whole batch does, op by op, on this backend.

In-batch compaction (adaptive/nn/compaction.py) runs a halting step on shrinking row counts and
promises every row the bits the whole batch gives it. That holds only where the backend's kernel
for an op does not change with the number of rows. This script checks the ops a halting step is
made of, on random inputs: for each op and feature width n, the row counts r (from 2 up to the
batch) at which the first r rows, run alone, differ in any bit from the same rows of the whole
batch. Per op it also reports the smallest and largest r * n among those (the elements one
operation holds), which is where XLA:CPU's switch between reduction kernels shows.

    python experiments/act_parity/row_bits.py --json experiments/act_parity/bench/row_bits.json
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

WIDTHS = (16, 64, 128, 256, 384, 512, 1024)
BATCH = 32

OPS = {
    "layernorm": lambda a, w: (a - a.mean(-1, keepdims=True)) * jax.lax.rsqrt(a.var(-1, keepdims=True) + 1e-6),
    "softmax": lambda a, w: jax.nn.softmax(a, -1),
    "matmul_1_column": lambda a, w: a @ w[:, :1],  # a halting unit as nnx.Linear computes it
    "multiply_and_sum": lambda a, w: (a * w[:, 0]).sum(-1),  # as unit_logit computes it
    "matmul_1_column_padded_to_2": lambda a, w: (a @ w[:, :2])[:, 0],
    "matmul_2_columns": lambda a, w: a @ w[:, :2],
    "matmul_wide": lambda a, w: a @ w,
}


def differing_rows(op, a: jax.Array, w: jax.Array) -> list[int]:
    fn = jax.jit(op)
    whole = np.asarray(fn(a, w))
    return [r for r in range(2, a.shape[0]) if not np.array_equal(np.asarray(fn(a[:r], w)), whole[:r])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    out: dict = {"backend": jax.default_backend(), "jax": jax.__version__, "batch": BATCH, "ops": {}}
    for name, op in OPS.items():
        by_width = {}
        for n in WIDTHS:
            a = jnp.asarray(rng.standard_normal((BATCH, n)), jnp.float32)
            w = jnp.asarray(rng.standard_normal((n, 256)), jnp.float32)
            by_width[str(n)] = differing_rows(op, a, w)
        elements = [r * int(n) for n, rows in by_width.items() for r in rows if r >= 8]
        out["ops"][name] = {
            "rows_that_differ_by_width": by_width,
            "elements_of_differing_ops_from_8_rows": [min(elements), max(elements)] if elements else None,
        }
        print(name, {n: (rows[0], rows[-1], len(rows)) if rows else "none" for n, rows in by_width.items()})
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
