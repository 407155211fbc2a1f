"""`adaptive bench quant --workdir DIR`: a trained run at each precision, side by side.

Each precision is calibrated on the validation split (adaptive.evaluation.quantization), then
every variant's inference is compiled with its weights baked in, as an artifact serves it, and
timed in interleaved rounds at each batch size (medians after warm-up). A classifier runs its
serving function at the full step budget; a language model, its forward pass over a batch of
validation windows. Rows: {variant, batch, ms, ratio (to fp32 at that batch), weight_bytes,
accuracy, memory_mb, ...}; `memory_mb` is the compiled function's arguments, outputs and
temporaries plus its weights (adaptive.compute.memory).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import data
from adaptive.bench.results import write_json
from adaptive.compute.memory import MB, memory_report
from adaptive.compute.timing import time_side_by_side
from adaptive.config import step_cap
from adaptive.evaluation.quantization import quantized
from adaptive.inference.export import serving_function
from adaptive.inference.restore import Run, load_run


def _inputs(run: Run, batch: int) -> np.ndarray:
    """`batch` validation inputs (the split's first, repeated when it is shorter)."""
    first = next(iter(data.eval_batches(run.cfg.data, "validation", batch)))["x"]
    return np.resize(first, (batch, *first.shape[1:]))


def _function(run: Run, batch: int):
    """(function, arguments) that one inference of `batch` inputs runs."""
    x = _inputs(run, batch)
    if run.cfg.model.kind == "lm":
        graphdef, params = run.graphdef, run.params

        def forward(tokens):
            return nnx.merge(graphdef, params)(tokens, train=False).logits_BxLxV

        return forward, (jnp.asarray(x, jnp.int32),)
    budget = jnp.full((batch,), step_cap(run.cfg), jnp.int32)
    return serving_function(run.graphdef, run.params), (jnp.asarray(x, jnp.float32), budget)


def run(
    workdir: str,
    precisions: list[str],
    batches: list[int],
    *,
    repeats: int = 30,
    limit: int | None = None,
    json_out: str | None = None,
) -> list[dict]:
    trained = load_run(workdir, language_model=True)
    variants = [quantized(trained, p, limit=limit, log=lambda line: print(f"  calibrating {line}")) for p in precisions]
    rows = []
    for batch in batches:
        calls, memory = {}, {}
        for v in variants:
            fn, args = _function(v.run, batch)
            compiled = jax.jit(fn).lower(*args).compile()
            memory[v.precision] = memory_report(compiled, v.weight_bytes)
            calls[v.precision] = functools.partial(compiled, *args)
        ms = time_side_by_side(calls, repeats=repeats)
        base = ms.get("fp32", ms[precisions[0]])
        for v in variants:
            rows.append(
                {
                    "variant": v.precision,
                    "batch": batch,
                    "ms": round(ms[v.precision], 4),
                    "ratio": round(ms[v.precision] / base, 3),
                    "weight_bytes": v.weight_bytes,
                    **v.score,
                    "clip": v.clip,
                    "memory_mb": memory[v.precision]["total_mb"],
                    "temporaries_mb": round(memory[v.precision]["temporaries"] / MB, 4),
                }
            )
    _print(rows, trained)
    write_json(json_out, rows)
    return rows


def _print(rows: list[dict], trained: Run) -> None:
    lm = trained.cfg.model.kind == "lm"
    what = "forward over validation windows" if lm else "serving function at the full step budget"
    print(f"{trained.workdir.name} (step {trained.step}): {what}; ratio = ms / fp32 ms at the same batch")
    quality = "bits/byte" if lm else "accuracy"
    print(f"{'variant':>8} {'batch':>5} {'ms':>9} {'ratio':>6} {'weights KB':>10} {'memory MB':>9} {quality:>9}")
    for r in rows:
        value = r["bits_per_byte"] if lm else r["accuracy"]
        print(
            f"{r['variant']:>8} {r['batch']:>5} {r['ms']:>9.3f} {r['ratio']:>6.2f} "
            f"{r['weight_bytes'] / 1024:>10.1f} {r['memory_mb']:>9.3f} {value:>9.4f}"
        )
