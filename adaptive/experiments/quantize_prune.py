"""The precision-and-pruning experiment's scoring (experiments/quantize_prune):

    python -m adaptive.experiments.quantize_prune --workdir RUN --json OUT [--batch B] [--limit N]

Builds every operating point of a trained run, fp32, bf16, int8 and int4 at 0 and 50% pruning,
with every choice made on the validation split (clipping ratios, the pruned experts, the kept
fine-tune), times all of them side by side at batch B (adaptive.evaluation.variant_timing), then
reads the test split once per point (with --limit N: its first N examples, or for a language
model N windows spread evenly over it). One row per point:
validation and test accuracy (a language model: next-byte accuracy and bits per byte), the drop
against the same run's fp32 point, FLOPs, weight bytes, memory of the compiled inference and
latency, each also as a ratio to fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive.evaluation.pruning import flops_of, pruned
from adaptive.evaluation.quantization import Variant, quantized, score
from adaptive.evaluation.variant_timing import time_variants
from adaptive.inference.restore import load_run
from adaptive.nn.quantize import weight_bytes

PRECISIONS = ("fp32", "bf16", "int8", "int4")
PRUNES = (0.0, 0.5)


def points(workdir: Path, *, batch: int, limit: int | None, repeats: int, fine_tune_steps: int) -> list[dict]:
    run = load_run(workdir, language_model=True)
    say = lambda line: print(f"  {line}", flush=True)  # noqa: E731
    variants: list[Variant] = []
    for prune in PRUNES:
        if prune == 0:
            base = Variant("fp32", 1.0, run, score(run, "validation", limit), weight_bytes(run.params), [])
        else:
            base = pruned(run, prune, fine_tune_steps=fine_tune_steps, limit=limit, log=say)
        for precision in PRECISIONS:
            if precision == "fp32":
                variants.append(base)
            else:
                variants.append(quantized(base.run, precision, limit=limit, prune=prune, log=say))
    names = [f"{v.precision}-p{round(v.prune * 100)}" for v in variants]
    timed = time_variants({n: (v.run, v.weight_bytes) for n, v in zip(names, variants, strict=True)}, batch, repeats)
    lm = run.cfg.model.kind == "lm"
    rows = []
    for name, v in zip(names, variants, strict=True):
        test = score(v.run, "test", limit)  # read once, after every choice
        ms, memory = timed[name]
        row = {
            "model": run.cfg.name,
            "variant": name,
            "precision": v.precision,
            "prune": v.prune,
            "clip": v.clip,
            "validation_accuracy": v.score["accuracy"],
            "test_accuracy": test["accuracy"],
            "flops": flops_of(v.run),
            "weight_bytes": v.weight_bytes,
            "memory_mb": memory["total_mb"],
            "temporaries_mb": round(memory["temporaries"] / 2**20, 4),
            "ms": round(ms, 4),
            "batch": batch,
        }
        if lm:
            row["validation_bits_per_byte"] = v.score["bits_per_byte"]
            row["test_bits_per_byte"] = test["bits_per_byte"]
        rows.append(row)
        say(f"{name}: {row}")
    base = rows[0]
    for row in rows:
        row["accuracy_drop"] = round(base["test_accuracy"] - row["test_accuracy"], 5)
        if lm:
            row["bits_per_byte_rise"] = round(row["test_bits_per_byte"] - base["test_bits_per_byte"], 5)
        for key in ("flops", "weight_bytes", "memory_mb", "ms"):
            row[f"{key}_ratio"] = round(row[key] / base[key], 4)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptive.experiments.quantize_prune")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=16, help="the batch every point is timed at")
    parser.add_argument(
        "--limit", type=int, help="score each split's first N examples (a language model: N windows spread over it)"
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--fine-tune-steps", type=int, default=200)
    args = parser.parse_args(argv)
    rows = points(
        args.workdir, batch=args.batch, limit=args.limit, repeats=args.repeats, fine_tune_steps=args.fine_tune_steps
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
