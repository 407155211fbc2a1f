"""`adaptive bench quant --workdir DIR`: a trained run at each precision and pruning level, side by side.

Each pruning level is cut and fine-tuned (adaptive.evaluation.pruning), each precision calibrated
on the validation split (adaptive.evaluation.quantization), then every variant is timed side by
side at each batch size (adaptive.evaluation.variant_timing). Rows: {variant, batch, ms, ratio
(to fp32 at that batch; to the first variant when fp32 is not among them), weight_bytes,
accuracy, flops, memory_mb, ...}, accuracy on the validation split; `memory_mb` is the compiled
function's arguments, outputs and temporaries plus its weights (adaptive.compute.memory);
`scored`: how many validation examples (a language model: windows) the quality figures are over,
`--limit` or the whole split, whichever is fewer (said in a line when `--limit` is more).
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
    scored = _scored(trained, limit)
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
                    "scored": scored,
                    "flops": flops[name],
                    "clip": v.clip,
                    "aware_steps": v.aware_steps,
                    "memory_mb": memory[name]["total_mb"],
                    "temporaries_mb": round(memory[name]["temporaries"] / MB, 4),
                }
            )
    _print(rows, trained, "fp32" if "fp32" in names else names[0], scored)
    write_json(json_out, rows)
    return rows


def _scored(trained: Run, limit: int | None) -> int:
    """How many validation examples (windows) the scores are over; a line when `limit` asks for
    more than the split holds."""
    from adaptive.data import load_split

    available = len(load_split(trained.cfg.data, "validation"))
    if limit is not None and limit > available:
        what = "windows" if trained.cfg.model.kind == "lm" else "examples"
        print(f"--limit {limit} is more than the validation split's {available} {what}: scoring all {available}")
    return available if limit is None else min(limit, available)


def _print(rows: list[dict], trained: Run, base: str, scored: int) -> None:
    lm = trained.cfg.model.kind == "lm"
    what = "forward over validation windows" if lm else "serving function at the full step budget"
    print(f"{trained.workdir.name} (step {trained.step}): {what}; ratio = ms / {base} ms at the same batch (medians)")
    quality = "bits_per_byte" if lm else "accuracy"
    print(
        f"columns as JSON keys, but weight_kb = weight_bytes / 1024; {quality} over {scored} validation "
        f"{'windows' if lm else 'examples'} (scored)"
    )
    print(f"{'variant':>9} {'batch':>5} {'ms':>9} {'ratio':>6} {'weight_kb':>10} {'memory_mb':>9} {quality:>13}")
    for r in rows:
        value = r["bits_per_byte"] if lm else r["accuracy"]
        print(
            f"{r['variant']:>9} {r['batch']:>5} {r['ms']:>9.3f} {r['ratio']:>6.2f} "
            f"{r['weight_bytes'] / 1024:>10.1f} {r['memory_mb']:>9.3f} {value:>13.4f}"
        )
