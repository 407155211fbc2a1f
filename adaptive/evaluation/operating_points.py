"""Precision and pruning as an artifact's operating points (`adaptive export --precision ...
--prune ...`).

Each point (precision, prune) is the run pruned (adaptive.evaluation.pruning: a share of its
feed-forward units and experts removed, then a short fine-tune) and then quantized (calibrated on
validation, adaptive.evaluation.quantization). It is written as its own `jax.export` function,
the same signature as model.jaxexport, and described in meta.json's `operating_points`: file and
checksum, validation accuracy, FLOPs per example at the step cap, weight bytes, device memory of
its compiled inference at the serving batch (adaptive.compute.memory), and latency measured on
this machine, every point timed side by side in interleaved rounds. A controller prices a point by
that measured time, not by its bytes or FLOPs: on XLA:CPU a smaller precision saves memory and
bytes moved, and only sometimes time. Point (fp32, 0) is model.jaxexport itself.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from adaptive.compute.memory import memory_report
from adaptive.compute.timing import time_side_by_side
from adaptive.config import step_cap
from adaptive.evaluation.pruning import flops_at_steps, flops_of, pruned
from adaptive.evaluation.quantization import Variant, quantized, score
from adaptive.evaluation.variant_timing import inputs
from adaptive.inference.artifact_meta import ArtifactError, point_file
from adaptive.inference.export import serving_function
from adaptive.inference.restore import Run
from adaptive.nn.quantize import check_precision, weight_bytes


def check_points(precisions: list[str], prunes: list[float]) -> list[tuple[str, float]]:
    """Every (precision, prune) pair, refused in one line when a value is out of range."""
    if not precisions or not prunes:
        raise ValueError("--precision and --prune each need one value or more (e.g. fp32,int8 and 0,0.5)")
    for precision in precisions:
        check_precision(precision)
    for prune in prunes:
        if not 0 <= prune < 1:
            raise ValueError(f"--prune {prune:g}: a share of units removed must be in [0, 1)")
        if abs(prune * 100 - round(prune * 100)) > 1e-9:
            raise ValueError(
                f"--prune {prune:g}: give whole percents (0.25, not 0.251); a point's file is named by them"
            )
    if len(set(precisions)) != len(precisions) or len({round(f * 100) for f in prunes}) != len(prunes):
        raise ValueError("--precision and --prune list each value once")
    return [(p, f) for f in prunes for p in precisions]


def operating_points(
    run: Run,
    precisions: list[str],
    prunes: list[float],
    *,
    batch: int = 16,
    fine_tune_steps: int = 200,
    aware_steps: int = 0,
    repeats: int = 30,
    memory_mb: float | None = None,
    log=None,
) -> tuple[list[dict], dict[str, bytes]]:
    """(meta.json's `operating_points` entries, {file name: blob}) for every (precision, prune);
    each exported function is checked to answer as its live variant before it is kept. With a
    memory budget (`memory_mb`), a point over it is left out (model.jaxexport is listed, marked
    with `fits`); an ArtifactError when no point fits."""
    say = log or (lambda line: None)
    variants = point_variants(
        run, precisions, prunes, fine_tune_steps=fine_tune_steps, aware_steps=aware_steps, log=say
    )
    (symbolic,) = jax.export.symbolic_shape("batch")
    shape = tuple(run.spec.input_shape)
    specs = (jax.ShapeDtypeStruct((symbolic, *shape), jnp.float32), jax.ShapeDtypeStruct((symbolic,), jnp.int32))
    x = jnp.asarray(inputs(run, batch), jnp.float32)
    budget = jnp.full((batch,), step_cap(run.cfg), jnp.int32)
    serving = run.cfg.budget.serving_batch  # memory is the serving batch's, as meta.json's `memory`
    x_spec = jax.ShapeDtypeStruct((serving, *shape), jnp.float32)
    budget_spec = jax.ShapeDtypeStruct((serving,), jnp.int32)
    entries, blobs, calls = [], {}, {}
    for v in variants:
        fn = jax.jit(serving_function(v.run.graphdef, v.run.params))
        exported = jax.export.export(fn)(*specs)
        _check_answers(exported, fn, v, x, budget)
        compiled = fn.lower(x, budget).compile()
        name = point_file(v.precision, v.prune)
        calls[name] = functools.partial(compiled, x, budget)
        memory = {"batch": serving, **memory_report(fn.lower(x_spec, budget_spec).compile(), v.weight_bytes)}
        entries.append(describe_point(v, memory, fine_tune_steps, bytes(exported.serialize()), blobs))
    say(f"timing {len(calls)} operating points side by side at batch {batch}")
    ms = time_side_by_side(calls, repeats=repeats)
    for entry, name in zip(entries, calls, strict=True):
        entry["latency_ms"] = {"batch": batch, "median": round(ms[name], 4)}
    return keep_fitting(entries, blobs, memory_mb, say)


def point_variants(
    run: Run, precisions: list[str], prunes: list[float], *, fine_tune_steps: int, aware_steps: int, log
) -> list[Variant]:
    """The run at every (precision, prune), in check_points' order: each share pruned once (and
    fine-tuned), then quantized at each precision; scored on validation."""
    variants: list[Variant] = []
    for prune in prunes:
        if prune > 0:
            base = pruned(run, prune, fine_tune_steps=fine_tune_steps, log=log)
        else:
            base = Variant("fp32", 1.0, run, score(run, "validation"), weight_bytes(run.params), [])
        for precision in precisions:
            if precision == "fp32":
                variants.append(base)
            else:
                variants.append(quantized(base.run, precision, aware_steps=aware_steps, prune=prune, log=log))
            log(f"point {precision}, prune {prune:g}: validation {variants[-1].score}")
    return variants


def describe_point(
    v: Variant, memory: dict, fine_tune_steps: int, blob: bytes, blobs: dict[str, bytes], flops: float | None = None
) -> dict:
    """meta.json's entry of variant `v` (latency is added once every point is timed); its
    function's `blob` joins `blobs` under its file name unless it is (fp32, 0), model.jaxexport.
    `flops`: what the point's function spends at most, where the run's own pricing is not it (a
    language model's artifact decodes over a cache of its own length, not the training window)."""
    entry = {
        "precision": v.precision,
        "prune": v.prune,
        **v.score,
        "flops": flops_of(v.run) if flops is None else float(flops),
        "weight_bytes": v.weight_bytes,
        "memory": memory,
        "clip": v.clip,
        "aware_steps": v.aware_steps,
        "fine_tune_steps": fine_tune_steps if v.prune > 0 else 0,
    }
    if v.run.cfg.model.kind != "lm":  # an adaptive classifier's realized FLOPs follow its steps
        entry["flops_at_steps"] = flops_at_steps(v.run)
    if (v.precision, v.prune) != ("fp32", 0.0):
        name = point_file(v.precision, v.prune)
        blobs[name] = blob
        entry.update(file=name, sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    return entry


def keep_fitting(entries: list[dict], blobs: dict[str, bytes], memory_mb: float | None, say):
    """(entries, blobs) less the points over a memory budget of `memory_mb` (None: no budget);
    each entry marked with `fits`, the primary (no file) kept whatever it needs; an ArtifactError
    when no point fits."""
    if memory_mb is None:
        return entries, blobs
    for entry in entries:
        entry["fits"] = entry["memory"]["total_mb"] <= memory_mb
    if not any(e["fits"] for e in entries):
        least = min(e["memory"]["total_mb"] for e in entries)
        raise ArtifactError(
            f"no operating point fits the memory budget of {memory_mb:g} MB; the smallest needs {least:g}"
        )
    for entry in entries:
        if not entry["fits"] and "file" in entry:
            say(
                f"point {entry['precision']}, prune {entry['prune']:g} needs "
                f"{entry['memory']['total_mb']:g} MB: left out"
            )
            blobs.pop(entry["file"])
            for name in ("prefill", "step"):  # a language model's point also has slot functions
                if name in entry.get("slots", {}):
                    blobs.pop(entry["slots"][name]["file"])
    kept = [e for e in entries if e["fits"] or "file" not in e]
    primary = next((e for e in kept if "file" not in e), None)
    if primary is not None and not primary["fits"]:  # kept: the points' reference, and a file every reader opens
        fits = next(e for e in kept if e["fits"])
        say(
            f"the model itself ({primary['precision']}, prune {primary['prune']:g}) needs "
            f"{primary['memory']['total_mb']:g} MB, over the budget: kept as the reference, not to serve; "
            f"serve a point that fits, e.g. adaptive serve --artifact ART --point {fits['precision']},{fits['prune']:g}"
        )
    return kept, blobs


def _check_answers(exported, fn, variant: Variant, x, budget) -> None:
    """The exported function answers as the jitted live variant on validation inputs."""
    got, want = jax.device_get(exported.call(x, budget)), jax.device_get(fn(x, budget))
    same = np.array_equal(got[0], want[0]) and np.array_equal(got[2], want[2])
    if not same or not np.allclose(got[1], want[1], rtol=1e-4, atol=1e-5):
        raise ArtifactError(
            f"operating point {variant.precision}, prune {variant.prune:g}: the exported function does not "
            "answer as the live model; not exported"
        )
