"""The figures of `adaptive eval`'s compute-aware report: accuracy vs compute, compute vs
difficulty, and the distribution of compute. Labelled axes with units, legends, the budget
target drawn as a line."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, never a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from adaptive.evaluation.curves import pareto_front  # noqa: E402


def draw(report: dict, steps_B: np.ndarray, shifted_steps_B: np.ndarray, prefix: Path, *, title: str) -> list[Path]:
    paths = [Path(f"{prefix}-accuracy_vs_compute.png"), Path(f"{prefix}-compute_histogram.png")]
    accuracy_vs_compute(report, paths[0], title)
    compute_histogram(report, steps_B, shifted_steps_B, paths[1], title)
    if "by_difficulty" in report:
        paths.append(Path(f"{prefix}-compute_vs_difficulty.png"))
        compute_vs_difficulty(report, paths[-1], title)
    return paths


def _target_flops(report: dict) -> float | None:
    """The budget's target in FLOPs: the budget grid maps steps to FLOPs linearly."""
    steps = report.get("target_steps")
    grid = [r for r in report["budget_grid"] if r.get("expert_budget") in (None, max_k(report))]
    if steps is None or len(grid) < 2:
        return None
    xs, ys = np.array([r["steps"] for r in grid]), np.array([r["flops"] for r in grid])
    if np.ptp(xs) == 0:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept + slope * steps)


def max_k(report: dict):
    ks = [r.get("expert_budget") for r in report["budget_grid"]]
    return max((k for k in ks if k is not None), default=None)


def accuracy_vs_compute(report: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 5))
    grid = report["budget_grid"]
    for k in sorted({r.get("expert_budget") for r in grid}, key=lambda k: k or 0):
        rows = [r for r in grid if r.get("expert_budget") == k]
        label = "step budgets 1..cap" + (f", {k} expert(s) a token" if k else "")
        ax.plot([r["flops"] for r in rows], [r["accuracy"] for r in rows], marker="o", ms=3, lw=1, label=label)
    front = pareto_front([(r["flops"], r["accuracy"]) for r in grid])
    ax.plot(*zip(*front, strict=True), color="black", lw=2, alpha=0.35, label="Pareto front (budgets)")
    if report.get("threshold_curve"):
        rows = report["threshold_curve"]
        ax.plot([r["flops"] for r in rows], [r["accuracy"] for r in rows], ls="--", lw=1, label="exit thresholds")
    if report.get("budgeted_batch"):
        rows = report["budgeted_batch"]
        ax.scatter([r["flops"] for r in rows], [r["accuracy"] for r in rows], marker="*", s=90, zorder=4,
                   label="budgeted batch (MSDNet thresholds)")  # fmt: skip
    for b in report.get("baselines", []):
        ax.scatter([b["flops"]], [b["accuracy"]], marker="s", zorder=4, label=f"baseline {b['name']}")
    if report.get("operating_points"):  # precision and pruning, at the full step budget
        from adaptive.evaluation.points_report import draw_points

        draw_points(ax, report["operating_points"])
    target = _target_flops(report)
    if target is not None:
        ax.axvline(target, color="red", ls=":", lw=1.2, label=f"budget target ({report['target']:g} {report['unit']})")
    ax.set(
        xlabel="mean compute per example (FLOPs, analytic)",
        ylabel=f"accuracy ({report['split']} split)",
        title=f"{title}: accuracy vs compute",
    )
    ax.grid(alpha=0.3)
    # beside the axes: where the points fall (high or low accuracy) depends on the run
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_histogram(report: dict, steps_B: np.ndarray, shifted_B: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    top = int(max(steps_B.max(), shifted_B.max()))
    bins = np.arange(0.5, top + 1.5)
    ax.hist(steps_B, bins=bins, alpha=0.6, label=f"{report['split']} split")
    ax.hist(shifted_B, bins=bins, alpha=0.4, label="shifted: " + report["shifted"]["what"])
    dist = report["compute_distribution"]["steps"]
    for name, style in (("mean", "-"), ("p50", "--"), ("p99", ":")):
        ax.axvline(dist[name], color="black", ls=style, lw=1, label=f"{name} {dist[name]:.2f} steps")
    if report.get("target_steps") is not None:
        ax.axvline(
            report["target_steps"], color="red", lw=1.5, label=f"budget target ({report['target_steps']:.2f} steps)"
        )
    ax.set(xlabel="steps used per example (blocks applied)", ylabel="examples", title=f"{title}: compute distribution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_vs_difficulty(report: dict, path: Path, title: str) -> None:
    fig, (ax_steps, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [(f"{report['split']} split", report["by_difficulty"])]
    if "by_difficulty" in report["shifted"]:
        series.append(("shifted: " + report["shifted"]["what"], report["shifted"]["by_difficulty"]))
    for label, rows in series:
        xs = [r["difficulty"] for r in rows]
        ax_steps.plot(xs, [r["steps"] for r in rows], marker="o", ms=3, label=label)
        ax_acc.plot(xs, [r["accuracy"] for r in rows], marker="o", ms=3, label=label)
    if report.get("target_steps") is not None:
        ax_steps.axhline(report["target_steps"], color="red", ls=":", label="budget target (mean steps)")
    ax_acc.axhline(0.5, color="grey", ls=":", lw=0.8, label="chance")
    ax_steps.set(xlabel="difficulty (non-zero entries in the input)", ylabel="mean steps used", title="Compute")
    ax_acc.set(xlabel="difficulty (non-zero entries in the input)", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
    for ax in (ax_steps, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: compute and accuracy vs difficulty")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
