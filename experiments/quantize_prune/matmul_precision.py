"""Whether a lower precision makes a large matmul faster on this backend, before any model.

One (1024 x 512) by (512 x 2048) product, side by side: fp32; bfloat16 inputs; int8 x int8 with
int32 accumulation (what adaptive/nn/quantize.py's integer matmul runs); int8 weights
dequantized to fp32 inside the jitted call. Calls are interleaved round by round, so drift on a
shared machine falls on every variant alike; each time is a median after warm-up, and each ratio
is to fp32's median. The answer depends on the CPU (an int8 product can use VNNI or AMX tiles
where the CPU has them), so the rows are written with the CPU's model and its int8 features.

    python experiments/quantize_prune/matmul_precision.py --json experiments/quantize_prune/matmul_precision.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

M, K, N = 1024, 512, 2048


def variants():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(M, K)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(K, N)), jnp.float32)
    x8 = jnp.asarray(rng.integers(-127, 128, size=(M, K)), jnp.int8)
    w8 = jnp.asarray(rng.integers(-127, 128, size=(K, N)), jnp.int8)
    scale = jnp.full((N,), 0.01, jnp.float32)

    def int8_x_int8(a, b):
        return jax.lax.dot(a, b, preferred_element_type=jnp.int32)

    def dequantized(a, b, s):
        return a @ (b.astype(jnp.float32) * s)

    return {
        "fp32": (jax.jit(jnp.matmul), (x, w)),
        "bf16": (jax.jit(jnp.matmul), (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))),
        "int8 x int8 (int32 accumulate)": (jax.jit(int8_x_int8), (x8, w8)),
        "int8 weights dequantized": (jax.jit(dequantized), (x, w8, scale)),
    }


def cpu() -> dict:
    """The CPU's model name and which of the int8 matrix features it has (Linux; else unknown)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"model": "unknown"}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"model": model, **{f: f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    fns = variants()
    for fn, inputs in fns.values():  # compile and warm every variant before timing any
        for _ in range(3):
            jax.block_until_ready(fn(*inputs))
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, (fn, inputs) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*inputs))
            times[name].append(1e3 * (time.perf_counter() - start))
    base = float(np.median(times["fp32"]))
    rows = [
        {"variant": name, "median_ms": float(np.median(t)), "ratio_to_fp32": float(np.median(t)) / base}
        for name, t in times.items()
    ]
    print(f"{'variant':34s} {'ms':>9s} {'x fp32':>8s}")
    for row in rows:
        print(f"{row['variant']:34s} {row['median_ms']:9.3f} {row['ratio_to_fp32']:8.3f}")
    if args.json:
        setup = {"m": M, "k": K, "n": N, "rounds": args.rounds, "backend": jax.default_backend()}
        setup.update(jax=jax.__version__, cpu=cpu())
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
