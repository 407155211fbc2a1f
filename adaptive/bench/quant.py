"""`adaptive bench quant --workdir DIR`: a trained run at each precision and pruning level, side by side.

Each pruning level is cut and fine-tuned (adaptive.evaluation.pruning), each precision calibrated
on the validation split (adaptive.evaluation.quantization), then
every variant's inference is compiled with its weights baked in, as an artifact serves it, and
timed in interleaved rounds at each batch size (medians after warm-up). A classifier runs its
serving function at the full step budget; a language model, its forward pass over a batch of
validation windows. Rows: {variant, batch, ms, ratio (to fp32 at that batch), weight_bytes,
accuracy, flops, memory_mb, ...}, accuracy on the validation split; `memory_mb` is the compiled
function's arguments, outputs and temporaries plus its weights (adaptive.compute.memory).
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
from adaptive.evaluation.pruning import flops_of, pruned
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
    prunes: tuple[float, ...] = (0.0,),
    fine_tune_steps: int = 200,
    aware_steps: int = 0,
    repeats: int = 30,
    limit: int | None = None,
    json_out: str | None = None,
) -> list[dict]:
    trained = load_run(workdir, language_model=True)
    say = lambda line: print(f"  {line}", flush=True)  # noqa: E731
    variants = []
    for prune in prunes:
        base = (
            trained if prune == 0 else pruned(trained, prune, fine_tune_steps=fine_tune_steps, limit=limit, log=say).run
        )
        for precision in precisions:
            variants.append(quantized(base, precision, limit=limit, aware_steps=aware_steps, prune=prune, log=say))
    names = [v.precision if v.prune == 0 else f"{v.precision}-p{round(v.prune * 100)}" for v in variants]
    flops = {name: flops_of(v.run) for name, v in zip(names, variants, strict=True)}
    rows = []
    for batch in batches:
        calls, memory = {}, {}
        for name, v in zip(names, variants, strict=True):
            fn, args = _function(v.run, batch)
            compiled = jax.jit(fn).lower(*args).compile()
            memory[name] = memory_report(compiled, v.weight_bytes)
            calls[name] = functools.partial(compiled, *args)
        ms = time_side_by_side(calls, repeats=repeats)
        base_ms = ms.get("fp32", ms[names[0]])
        for name, v in zip(names, variants, strict=True):
            rows.append(
                {
                    "variant": name,
                    "precision": v.precision,
                    "prune": v.prune,
                    "batch": batch,
                    "ms": round(ms[name], 4),
                    "ratio": round(ms[name] / base_ms, 3),
                    "weight_bytes": v.weight_bytes,
                    **v.score,
                    "flops": flops[name],
                    "clip": v.clip,
                    "aware_steps": v.aware_steps,
                    "memory_mb": memory[name]["total_mb"],
                    "temporaries_mb": round(memory[name]["temporaries"] / MB, 4),
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
    print(f"{'variant':>9} {'batch':>5} {'ms':>9} {'ratio':>6} {'weights KB':>10} {'memory MB':>9} {quality:>9}")
    for r in rows:
        value = r["bits_per_byte"] if lm else r["accuracy"]
        print(
            f"{r['variant']:>9} {r['batch']:>5} {r['ms']:>9.3f} {r['ratio']:>6.2f} "
            f"{r['weight_bytes'] / 1024:>10.1f} {r['memory_mb']:>9.3f} {value:>9.4f}"
        )
