"""Figures for reports: compute and accuracy by difficulty, accuracy vs compute, expert usage.

Each takes what the report already read and writes one PNG with labelled axes and units.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, never a screen
import matplotlib.pyplot as plt  # noqa: E402

from adaptive.evaluation.curves import pareto_front  # noqa: E402
from adaptive.evaluation.plot_labels import annotate  # noqa: E402
from adaptive.training.metrics import read_jsonl  # noqa: E402

# What a task's difficulty counts, for the axis (adaptive/data: parity.py, addition.py).
DIFFICULTY = {
    "parity": "difficulty (non-zero entries in the input)",
    "addition": "difficulty (places an answer digit reads)",
}


def by_difficulty(curves: list[tuple[str, list[tuple[str, dict]]]], path: str, task: str = "parity") -> None:
    """Mean steps and accuracy against difficulty, a line per run and split (one task's runs)."""
    fig, (ax_steps, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.8))
    xlabel = DIFFICULTY.get(task, "difficulty")
    for name, split, metrics in [(name, split, m) for name, per_split in curves for split, m in per_split]:
        steps = metrics.get("eval/steps_by_difficulty")
        if not steps:
            continue
        acc = metrics["eval/accuracy_by_difficulty"]
        xs = [d for d, v in enumerate(steps) if v is not None]
        label = f"{name} ({split})"
        ax_steps.plot(xs, [steps[d] for d in xs], marker="o", ms=3, label=label)
        ax_acc.plot(xs, [acc[d] for d in xs], marker="o", ms=3, label=label)
    ax_steps.set(
        xlabel=xlabel,
        ylabel="mean steps used (blocks applied)",
        title="Compute vs difficulty",
    )
    ax_acc.set(
        xlabel=xlabel,
        ylabel="accuracy",
        ylim=(0.0, 1.02),
        title="Accuracy vs difficulty",
    )
    if task == "parity":  # two classes
        ax_acc.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    for ax in (ax_steps, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside, not over, the lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def expert_usage(workdirs: list[Path], path: str) -> None:
    """Routing over training: usage entropy per run, and each expert's share of tokens per run."""
    runs = [(w.name, [r for r in read_jsonl(w / "metrics.jsonl") if "moe/expert_usage" in r]) for w in workdirs]
    runs = [(name, rows) for name, rows in runs if rows]
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(5 * (len(runs) + 1), 4), squeeze=False)
    ax_entropy = axes[0][0]
    for name, rows in runs:
        ax_entropy.plot([r["step"] for r in rows], [r["moe/usage_entropy"] for r in rows], label=name)
    experts = len(runs[0][1][0]["moe/expert_usage"]) if runs else 1
    ax_entropy.axhline(math.log(experts), color="grey", ls=":", lw=0.8, label=f"uniform (ln {experts})")
    ax_entropy.set(xlabel="training step", ylabel="entropy of expert usage (nats)", title="Balance over training")
    ax_entropy.legend(fontsize=8)
    for ax, (name, rows) in zip(axes[0][1:], runs, strict=True):
        shares = list(zip(*(r["moe/expert_usage"] for r in rows), strict=True))
        for e, share in enumerate(shares):
            ax.plot([r["step"] for r in rows], share, lw=1, label=f"expert {e}")
        ax.axhline(1 / len(shares), color="grey", ls=":", lw=0.8)
        top = max(max(share) for share in shares)
        ax.set(xlabel="training step", ylabel="share of routed tokens", title=name, ylim=(0, max(0.3, 1.2 * top)))
        ax.legend(fontsize=6, ncol=2)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _static(method: str) -> bool:
    """A run whose compute per example is fixed: static depth, and no top-p routing (whose
    experts per token vary with the input)."""
    return method.startswith("static") and "top-p" not in method


def accuracy_vs_compute(rows: list[dict], path: str) -> None:
    """Each run's accuracy against its mean FLOPs per example; static and adaptive runs as two
    series (each joined along its Pareto front), budget targets as vertical lines."""
    accuracy_key = next(k for k in rows[0] if k.endswith("_accuracy") and not k.endswith("_range"))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for family, marker in (("static", "s"), ("adaptive", "o")):
        points = sorted(
            (r["eval_flops"], r[accuracy_key], r["run"]) for r in rows if _static(r["method"]) == (family == "static")
        )
        if not points:
            continue
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=family, zorder=3)
        front = pareto_front([(p[0], p[1]) for p in points])
        ax.plot([p[0] for p in front], [p[1] for p in front], alpha=0.6)
        annotate(ax, points, fontsize=6, xytext=(3, 3), textcoords="offset points")
    targets = sorted({r["target_flops"] for r in rows if "target_flops" in r})
    for target in targets:
        ax.axvline(target, color="grey", ls=":", lw=0.8)
    per = "token" if all(r.get("kind") == "lm" for r in rows) else "example"  # report refuses the two mixed
    ax.set(
        xlabel=f"mean compute per {per} (FLOPs, analytic)",
        ylabel=accuracy_key.replace("_", " ") + (" (next byte)" if per == "token" else ""),
        title="Accuracy vs compute" + (" (dotted: budget targets)" if targets else ""),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
