"""Variants of one run (precisions, pruning levels) timed side by side, with their memory.

Each variant's inference is compiled with its weights baked in, as an artifact serves it, and
timed in interleaved rounds (medians after warm-up) on the same validation inputs: a classifier's
serving function at the full step budget, a language model's forward pass over a batch of
windows. Memory is the compiled function's arguments, outputs and temporaries plus its weights
(adaptive.compute.memory).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import data
from adaptive.compute.memory import memory_report
from adaptive.compute.timing import time_side_by_side
from adaptive.config import step_cap
from adaptive.inference.export import serving_function
from adaptive.inference.restore import Run


def inputs(run: Run, batch: int) -> np.ndarray:
    """`batch` validation inputs (the split's first, repeated when it is shorter)."""
    first = next(iter(data.eval_batches(run.cfg.data, "validation", batch)))["x"]
    return np.resize(first, (batch, *first.shape[1:]))


def inference_call(run: Run, batch: int):
    """(function, arguments) that one inference of `batch` validation inputs runs."""
    x = inputs(run, batch)
    if run.cfg.model.kind == "lm":
        graphdef, params = run.graphdef, run.params

        def forward(tokens):
            return nnx.merge(graphdef, params)(tokens, train=False).logits_BxLxV

        return forward, (jnp.asarray(x, jnp.int32),)
    budget = jnp.full((batch,), step_cap(run.cfg), jnp.int32)
    return serving_function(run.graphdef, run.params), (jnp.asarray(x, jnp.float32), budget)


def time_variants(runs: dict[str, tuple[Run, int]], batch: int, repeats: int) -> dict[str, tuple[float, dict]]:
    """{name: (median ms, memory report)} of each (run, its weight bytes), side by side."""
    calls, memory = {}, {}
    for name, (run, weights) in runs.items():
        fn, args = inference_call(run, batch)
        compiled = jax.jit(fn).lower(*args).compile()
        memory[name] = memory_report(compiled, weights)
        calls[name] = functools.partial(compiled, *args)
    ms = time_side_by_side(calls, repeats=repeats)
    return {name: (ms[name], memory[name]) for name in runs}
