"""An artifact's operating points (precision x pruning) scored on a split and drawn as a front:
`adaptive eval --workdir DIR --points ART`.

Each point's exported function (adaptive.evaluation.operating_points) runs the split at the full
step budget, so its accuracy here is measured on the report's split, not copied from meta.json
(which holds the validation accuracy its choices were made on), and so are its mean steps and
FLOPs (each example's at the steps it took: an adaptive model halts before the cap; top-p
experts priced at the most a token may use). FLOPs per
step, weight bytes, memory and latency come from meta.json, measured at export. An adaptive
run's compute report draws the points on its accuracy-vs-compute plot beside its step and
expert budgets; a static run gets this report alone: accuracy against FLOPs, against memory and
against latency, the Pareto front of each.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from adaptive.config import step_cap  # noqa: E402
from adaptive.evaluation.curves import on_front, pareto_front  # noqa: E402
from adaptive.evaluation.plot_labels import annotate  # noqa: E402
from adaptive.inference.export import load_artifact  # noqa: E402
from adaptive.inference.restore import Run  # noqa: E402
from adaptive.inference.scoring import split_batches  # noqa: E402
from adaptive.workdir.config_file import RunError  # noqa: E402


def points_of(meta: dict, run: Run, artifact: str | Path) -> list[dict]:
    """meta.json's operating points, refused in one line unless `artifact` was exported from
    `run` at its step and has some (a classifier's or a language model's)."""
    source = meta["source"]
    if Path(source["workdir"]).resolve() != run.workdir.resolve() or source["step"] != run.step:
        raise RunError(
            f"{artifact} was exported from {source['workdir']} at step {source['step']}, "
            f"not from {run.workdir} at step {run.step}"
        )
    entries = meta.get("operating_points", [])
    if not entries:
        raise RunError(f"{artifact} has no operating points: export it with --precision and --prune")
    return entries


def score_points(run: Run, split: str, artifact: str | Path) -> list[dict]:
    """One row per operating point of `artifact` (exported from `run`), scored on `split`."""
    _, meta = load_artifact(artifact)
    entries = points_of(meta, run, artifact)
    cap = step_cap(run.cfg)
    rows = []
    for entry in entries:
        exported, _ = load_artifact(artifact, point=(entry["precision"], entry["prune"]))
        correct = total = 0
        steps = []
        for batch, real in split_batches(run.cfg, split, run.cfg.train.eval_batch_size):
            x = np.asarray(batch["x"], np.float32)
            prediction, _, taken, _ = jax.device_get(exported.call(x, np.full(len(x), cap, np.int32)))
            correct += int((np.asarray(prediction)[real] == batch["y"][real]).sum())
            total += int(np.asarray(real).sum())
            steps.append(np.asarray(taken)[real])
        steps = np.concatenate(steps)
        # realized: the mean over examples of each one's FLOPs at the steps it took (an artifact
        # from before per-step FLOPs were kept has only the cap's)
        table = entry.get("flops_at_steps")
        flops = float(np.mean(np.asarray(table)[np.clip(steps, 1, len(table)) - 1])) if table else entry["flops"]
        rows.append(
            {
                "label": f"{entry['precision']} prune {entry['prune']:g}",
                "precision": entry["precision"],
                "prune": entry["prune"],
                "accuracy": correct / max(total, 1),
                "validation_accuracy": entry["accuracy"],
                "steps": float(steps.mean()),
                "flops": flops,
                "flops_at_cap": entry["flops"],
                "weight_bytes": entry["weight_bytes"],
                "memory_mb": entry["memory"]["total_mb"],
                "latency_ms": entry["latency_ms"]["median"],
                "latency_batch": entry["latency_ms"]["batch"],
            }
        )
    for axis in ("flops", "memory_mb", "latency_ms"):
        for r, front in zip(rows, on_front([(r[axis], r["accuracy"]) for r in rows]), strict=True):
            r[f"pareto_{axis}"] = front
    return rows


MARKERS = {"fp32": "o", "bf16": "s", "int8": "^", "int4": "v"}


def draw_points(ax, rows: list[dict], axis: str = "flops") -> None:
    """The points on `ax`: a marker per precision, hollow when pruned, each labelled."""
    for r in rows:
        filled = r["prune"] == 0
        ax.scatter(
            [r[axis]], [r["accuracy"]], marker=MARKERS[r["precision"]], s=55, zorder=5,
            facecolors="C3" if filled else "none", edgecolors="C3",
        )  # fmt: skip
    labels = [(r[axis], r["accuracy"], r["label"]) for r in rows]
    annotate(ax, labels, fontsize=6, xytext=(3, 3), textcoords="offset points")


def points_report(run: Run, split: str, artifact: str | Path) -> tuple[dict, list[Path]]:
    """DIR/eval/<split>-points-step<N>.json and .png for a run's exported operating points."""
    rows = score_points(run, split, artifact)
    out_dir = run.workdir / "eval"
    out_dir.mkdir(exist_ok=True)
    report = {"step": run.step, "split": split, "artifact": str(artifact), "operating_points": rows}
    path = out_dir / f"{split}-points-step{run.step}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    png = out_dir / f"{split}-points-step{run.step}.png"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), sharey=True)
    titles = {"flops": "FLOPs per example", "memory_mb": "memory of the compiled inference (MB)", "latency_ms": ""}
    titles["latency_ms"] = f"latency at batch {rows[0]['latency_batch']} (ms, this machine)"
    for ax, axis in zip(axes, titles, strict=True):
        front = pareto_front([(r[axis], r["accuracy"]) for r in rows])
        ax.plot(*zip(*front, strict=True), color="black", lw=2, alpha=0.3, label="Pareto front")
        draw_points(ax, rows, axis)
        ax.set(xlabel=titles[axis])
        ax.grid(alpha=0.3)
    axes[0].set(ylabel=f"accuracy ({split} split)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{run.workdir.name}: operating points (filled: unpruned; hollow: pruned)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return report, [path, png]
