"""Post-training quantization of a trained run, calibrated on the validation split.

A variant is the run's model rewritten at a precision (adaptive.nn.quantize). Per-channel weight
scales need no data; what data decides is the clipping ratio: the scale covers `clip * max|w|`
and saturates the rest. Each candidate of CLIPS is scored on the calibration split (validation by
default; never the test split) and the best kept: highest accuracy for a classifier, lowest bits
per byte for a language model. Inputs to each integer matmul are quantized per row at run time,
so nothing else needs calibrating. When post-training quantization loses too much,
quantization-aware fine-tuning (`aware_steps`) trains the weights through their quantized values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adaptive.inference import outcomes
from adaptive.inference.restore import Run
from adaptive.nn.quantize import check_precision, fake_quantizer, quantize_model, weight_bytes
from adaptive.training.fine_tune import fine_tune

# Clipping ratios tried per precision: int8's 255 levels rarely gain from clipping; int4's 15 do.
CLIPS = {"fp32": (1.0,), "bf16": (1.0,), "int8": (1.0, 0.9), "int4": (1.0, 0.9, 0.8, 0.7)}


@dataclass
class Variant:
    precision: str
    clip: float
    run: Run  # the run with its model rewritten at `precision`
    score: dict  # accuracy (classifier: at the cap, every expert; LM: next byte), bits_per_byte (LM)
    weight_bytes: int
    candidates: list[dict]  # every clip tried: {clip, accuracy[, bits_per_byte]}
    prune: float = 0.0  # the share of hidden units and experts removed (adaptive.evaluation.pruning)
    aware_steps: int = 0  # quantization-aware fine-tuning steps behind it (0: post-training)


def score(run: Run, split: str, limit: int | None = None) -> dict:
    """The run's quality on `split` (its first `limit` examples or windows) at its full budget."""
    if run.cfg.model.kind == "lm":
        from adaptive.evaluation.lm_report import score_point

        point = score_point(run, split, limit=limit)
        return {"accuracy": round(point["accuracy"], 5), "bits_per_byte": round(point["bits_per_byte"], 5)}
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    out = outcomes.collect(run.graphdef, run.params, run.cfg, split, k_max=k_max, limit=limit)
    return {"accuracy": round(float(out.correct_KxTxB[-1, -1].mean()), 5)}


def quantized(
    run: Run,
    precision: str,
    *,
    split: str = "validation",
    limit: int | None = None,
    aware_steps: int = 0,
    prune: float = 0.0,
    log=None,
) -> Variant:
    """The run at `precision` with the clipping ratio that scores best on `split`; with
    `aware_steps`, also fine-tuned that long with fake-quantized weights at that clip, and kept
    if that scores better. `prune`: what the run had removed (recorded, not done here)."""
    check_precision(precision)
    if split == "test":
        raise ValueError("quantization is calibrated on validation data; the test split is read once, at the end")
    tried = []
    for clip in CLIPS[precision]:
        graphdef, params = quantize_model(run.graphdef, run.params, precision, clip)
        variant = dataclasses.replace(run, graphdef=graphdef, params=params)
        tried.append((clip, variant, score(variant, split, limit)))
        if log:
            log(f"{precision} clip {clip:g}: {tried[-1][2]}")
    lm = run.cfg.model.kind == "lm"
    rank = lambda t: t[2]["bits_per_byte"] if lm else -t[2]["accuracy"]  # noqa: E731
    clip, best, best_score = min(tried, key=rank)
    candidates = [{"clip": c, "aware_steps": 0, **s} for c, _, s in tried]
    steps = 0
    if aware_steps > 0 and precision != "fp32":
        transform = fake_quantizer(run.graphdef, precision, clip)
        tuned = fine_tune(
            run.cfg, run.spec, run.graphdef, run.params, aware_steps, budget=run.budget, transform=transform
        )
        graphdef, params = quantize_model(run.graphdef, tuned, precision, clip)
        aware = dataclasses.replace(run, graphdef=graphdef, params=params)
        aware_score = score(aware, split, limit)
        candidates.append({"clip": clip, "aware_steps": aware_steps, **aware_score})
        if log:
            log(f"{precision} clip {clip:g} after {aware_steps} quantization-aware steps: {aware_score}")
        if rank((clip, aware, aware_score)) < rank((clip, best, best_score)):
            best, best_score, steps = aware, aware_score, aware_steps
    return Variant(precision, clip, best, best_score, weight_bytes(best.params), candidates, prune, steps)
