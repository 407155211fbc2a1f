"""`adaptive bench quant --workdir DIR`: a trained run at each precision and pruning level, side by side.

Each pruning level is cut and fine-tuned (adaptive.evaluation.pruning), each precision calibrated
on the validation split (adaptive.evaluation.quantization), then every variant is timed side by
side at each batch size (adaptive.evaluation.variant_timing). Rows: {variant, batch, ms, ratio
(to fp32 at that batch; to the first variant when fp32 is not among them), weight_bytes,
accuracy, flops, memory_mb, ...}, accuracy on the validation split; `memory_mb` is the compiled
function's arguments, outputs and temporaries plus its weights (adaptive.compute.memory).
"""

from __future__ import annotations

from adaptive.bench.results import write_json
from adaptive.compute.memory import MB
from adaptive.evaluation.pruning import check_prunable, flops_of, pruned
from adaptive.evaluation.quantization import quantized
from adaptive.evaluation.variant_timing import time_variants
from adaptive.inference.restore import Run, load_run


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
    if any(prunes):  # before any variant is computed
        check_prunable(trained, max(prunes))
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
        timed = time_variants(
            {n: (v.run, v.weight_bytes) for n, v in zip(names, variants, strict=True)}, batch, repeats
        )
        ms = {name: t[0] for name, t in timed.items()}
        memory = {name: t[1] for name, t in timed.items()}
        base = "fp32" if "fp32" in ms else names[0]
        base_ms = ms[base]
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
    _print(rows, trained, "fp32" if "fp32" in names else names[0])
    write_json(json_out, rows)
    return rows


def _print(rows: list[dict], trained: Run, base: str) -> None:
    lm = trained.cfg.model.kind == "lm"
    what = "forward over validation windows" if lm else "serving function at the full step budget"
    print(f"{trained.workdir.name} (step {trained.step}): {what}; ratio = ms / {base} ms at the same batch")
    quality = "bits/byte" if lm else "accuracy"
    print(f"{'variant':>9} {'batch':>5} {'ms':>9} {'ratio':>6} {'weights KB':>10} {'memory MB':>9} {quality:>9}")
    for r in rows:
        value = r["bits_per_byte"] if lm else r["accuracy"]
        print(
            f"{r['variant']:>9} {r['batch']:>5} {r['ms']:>9.3f} {r['ratio']:>6.2f} "
            f"{r['weight_bytes'] / 1024:>10.1f} {r['memory_mb']:>9.3f} {value:>9.4f}"
        )
