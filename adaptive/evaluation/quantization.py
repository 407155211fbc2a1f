"""Post-training quantization of a trained run, calibrated on the validation split.

A variant is the run's model rewritten at a precision (adaptive.nn.quantize). Per-channel weight
scales need no data; what data decides is the clipping ratio: the scale covers `clip * max|w|`
and saturates the rest. Each candidate of CLIPS is scored on the calibration split (validation by
default; never the test split) and the best kept: highest accuracy for a classifier, lowest bits
per byte for a language model. Inputs to each integer matmul are quantized per row at run time,
so nothing else needs calibrating.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adaptive.inference import outcomes
from adaptive.inference.restore import Run
from adaptive.nn.quantize import check_precision, quantize_model, weight_bytes

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


def score(run: Run, split: str, limit: int | None = None) -> dict:
    """The run's quality on `split` (its first `limit` examples or windows) at its full budget."""
    if run.cfg.model.kind == "lm":
        from adaptive.evaluation.lm_report import score_point

        point = score_point(run, split, limit=limit)
        return {"accuracy": round(point["accuracy"], 5), "bits_per_byte": round(point["bits_per_byte"], 5)}
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    out = outcomes.collect(run.graphdef, run.params, run.cfg, split, k_max=k_max, limit=limit)
    return {"accuracy": round(float(out.correct_KxTxB[-1, -1].mean()), 5)}


def quantized(run: Run, precision: str, *, split: str = "validation", limit: int | None = None, log=None) -> Variant:
    """The run at `precision` with the clipping ratio that scores best on `split`."""
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
    clip, best, best_score = min(tried, key=lambda t: t[2]["bits_per_byte"] if lm else -t[2]["accuracy"])
    return Variant(
        precision,
        clip,
        best,
        best_score,
        weight_bytes(best.params),
        [{"clip": c, **s} for c, _, s in tried],
    )
