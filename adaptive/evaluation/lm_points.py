"""A language model's operating points (`adaptive export --precision ... --prune ...` of an LM).

Each point (precision, prune) is the run pruned and quantized as a classifier's points are
(adaptive.evaluation.operating_points: calibrated and scored on validation), then decoded: its
generation -- prefill and the KV-cached decode loop, the caps compiled in, the budgets inputs --
is written as its own `jax.export` function with the signature of the artifact's model.jaxexport
(adaptive.inference.lm_export), checked to generate exactly what its live decoder generates
before it is kept; and so are its slot functions for `adaptive serve` (adaptive.inference.
slot_export, checked by the exporter once written), so a server can run a point as its fallback.
meta.json's `operating_points` describe each: files and checksums, validation next-byte accuracy
and bits per byte, FLOPs per token through every block, weight bytes, device memory of its
compiled generation at the serving batch (adaptive.compute.memory), and the time of a whole
generation measured on this machine, every point timed side by side in interleaved rounds, and
per token. A client or controller prices a point by that measured time: on XLA:CPU a lower
precision saves bytes and memory, and only sometimes time. Point (fp32, 0) is model.jaxexport
itself.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from adaptive.compute.memory import memory_report
from adaptive.compute.timing import time_side_by_side
from adaptive.data import byte_vocab
from adaptive.evaluation.operating_points import describe_point, keep_fitting, point_variants
from adaptive.evaluation.pruning import flops_of
from adaptive.inference.artifact_meta import point_file
from adaptive.inference.generate import decoder_for_run
from adaptive.inference.lm_export import check_generation, generation_function, input_specs, serialize
from adaptive.inference.restore import Run
from adaptive.inference.slot_export import serialize as serialize_slots
from adaptive.inference.slots import SlotDecoder

# What the points are timed on: the start of a function definition, as a user of a byte-level
# model of Python source would prompt it; each row generates the whole new capacity (EOS ignored).
TIMING_PROMPT = b"def main(argv):\n    "


def lm_operating_points(
    run: Run,
    precisions: list[str],
    prunes: list[float],
    *,
    prompt_capacity: int,
    new_capacity: int,
    threshold: float,
    slots: int,
    batch: int = 8,
    fine_tune_steps: int = 200,
    aware_steps: int = 0,
    repeats: int = 10,
    memory_mb: float | None = None,
    log=None,
) -> tuple[list[dict], dict[str, bytes], dict]:
    """(meta.json's `operating_points` entries, {file name: blob}, {(precision, prune): live
    SlotDecoder} of the points with files) for every (precision, prune) of a language model's
    run, each generation decoding prompts of up to `prompt_capacity` bytes and up to
    `new_capacity` new ones, in `slots` serving slots; timed at `batch` rows, greedy, exits at
    `threshold`. With a memory budget (`memory_mb`) a point over it is left out, as for a
    classifier."""
    say = log or (lambda line: None)
    variants = point_variants(
        run, precisions, prunes, fine_tune_steps=fine_tune_steps, aware_steps=aware_steps, log=say
    )
    prompt = byte_vocab.encode(TIMING_PROMPT, eos=False)[:prompt_capacity]
    padded = np.zeros((batch, prompt_capacity), np.int32)
    padded[:, : len(prompt)] = prompt
    lengths = np.full((batch,), len(prompt), np.int32)
    serving = run.cfg.budget.serving_batch
    entries, blobs, calls, live_slots = [], {}, {}, {}
    for v in variants:
        decoder = decoder_for_run(v.run, prompt_capacity=prompt_capacity, new_capacity=new_capacity)
        primary = (v.precision, v.prune) == ("fp32", 0.0)  # model.jaxexport: the exporter writes it
        if not primary:  # the slots' count is concrete, so their steps keep row buckets
            live_slots[(v.precision, v.prune)] = SlotDecoder.of(decoder, slots)
        decoder.compact = False  # as the artifact's generation: row buckets need a concrete batch
        name, blob = point_file(v.precision, v.prune), b""  # (fp32, 0): the exporter writes and checks it
        if not primary:
            blob = serialize(decoder)
            check_generation(jax.export.deserialize(bytearray(blob)), decoder, f"operating point {name}")
        limits = decoder.limits(batch, threshold=threshold, ignore_eos=True)
        fn = generation_function(decoder)
        calls[name] = functools.partial(fn.lower(padded, lengths, *limits).compile(), padded, lengths, *limits)
        memory = {"batch": serving, **memory_report(fn.lower(*input_specs(decoder, serving)).compile(), v.weight_bytes)}
        # a token through every block with every expert, over this artifact's cache: as the
        # decoder prices it (meta.json's worst_flops_per_token_at_layer_cap, what serving reports)
        worst = decoder.flops.extremes(False)[1]
        entries.append(describe_point(v, memory, fine_tune_steps, blob, blobs, flops=worst))
        # and over a training window, as `adaptive eval` prices the thresholds it draws them beside
        entries[-1]["flops_at_window"] = flops_of(v.run)
        if not primary:
            prefix = name.removesuffix(".jaxexport") + "-"
            slot_blobs, entries[-1]["slots"] = serialize_slots(live_slots[(v.precision, v.prune)], prefix)
            blobs.update(slot_blobs)
    say(
        f"timing {len(calls)} operating points side by side: {batch} rows x {new_capacity} new tokens, each "
        f"compiled and run twice first (the slow part), then {repeats} interleaved rounds"
    )
    start = time.perf_counter()
    ms = time_side_by_side(calls, repeats=repeats, warmup=2)
    say(f"timed in {time.perf_counter() - start:.0f} s: " + ", ".join(f"{n} {t:.1f} ms" for n, t in ms.items()))
    for entry, name in zip(entries, calls, strict=True):
        per_token = ms[name] / new_capacity
        entry["latency_ms"] = {
            "batch": batch,
            "new_tokens": new_capacity,
            "median": round(ms[name], 4),
            "per_token": round(per_token, 4),
        }
    entries, blobs = keep_fitting(entries, blobs, memory_mb, say)
    kept = {(e["precision"], e["prune"]) for e in entries}
    return entries, blobs, {point: live for point, live in live_slots.items() if point in kept}
