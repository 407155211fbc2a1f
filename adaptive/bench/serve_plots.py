"""Figures of `adaptive bench serve`: latency CDFs per arrival pattern, and the step budget the
controller gave each request over time."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, never a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from adaptive.bench.loadgen import ANSWERED, PATTERNS  # noqa: E402


def _minor_labels(ax):
    """A log axis' minor tick labels as plain numbers: each one on a range under two decades
    (short labels fit), else only 2 and 5 x a power of ten."""

    def label(value: float, _) -> str:
        low, high = ax.get_xlim()
        mantissa = value / 10 ** np.floor(np.log10(value)) if value > 0 else 0.0
        every = low > 0 and high / low < 100
        return f"{value:g}" if every or any(np.isclose(mantissa, (2.0, 5.0))) else ""

    return FuncFormatter(label)


def latency_cdfs(traces: dict, sla_ms: float, path: Path) -> None:
    """Per pattern, each policy's latency CDF over all requests sent: rejected, deferred and
    failed requests never arrive, so a curve that stops below 1 shows how many were lost."""
    fig, axes = plt.subplots(1, len(PATTERNS), figsize=(5 * len(PATTERNS), 4.2), sharey=True)
    for ax, pattern in zip(axes, PATTERNS, strict=True):
        for (policy, p), records in traces.items():
            if p != pattern:
                continue
            lat = np.sort([1e3 * (r["done"] - r["scheduled"]) for r in records if r.get("status") in ANSWERED])
            ax.plot(lat, np.arange(1, len(lat) + 1) / max(len(records), 1), label=policy)
        ax.axvline(sla_ms, color="red", ls=":", label=f"SLA {sla_ms:g} ms")
        ax.set(xscale="log", xlabel="latency from scheduled arrival (ms)", title=pattern)
        # Plain numbers: matplotlib's own "3x10^0" labels of the minor ticks run into each other.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(_minor_labels(ax))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests sent, answered within x")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_over_time(traces: dict, path: Path) -> None:
    """The controller's choice per request over time: step budget, model, experts per token; a
    row of panels (one per pattern) for each policy with the controller."""
    policies = list(dict.fromkeys(policy for policy, _ in traces if "controller" in policy)) or ["controller"]
    traced = [r for (policy, _), records in traces.items() if policy in policies for r in records]
    colors: dict = {}
    fig, grid = plt.subplots(
        len(policies), len(PATTERNS), figsize=(5 * len(PATTERNS), 3.8 * len(policies)), sharey=True, squeeze=False
    )
    for (row, policy), (col, pattern) in itertools.product(enumerate(policies), enumerate(PATTERNS)):
        ax, records = grid[row, col], traces.get((policy, pattern), [])
        # One series per (model, experts per token), coloured the same in every panel: a MoE
        # primary degraded to fewer experts shows as its own colour.
        series = sorted({(r["model"], r.get("budget_experts") or 0) for r in traced if r.get("budget_steps")})
        for model, k in series:
            color = colors.setdefault((model, k), f"C{len(colors)}")
            pts = [
                (r["scheduled"], r["budget_steps"])
                for r in records
                if r.get("model") == model and (r.get("budget_experts") or 0) == k and r.get("budget_steps")
            ]
            if not pts:
                continue
            label = f"{model} model" + (f", {k} expert(s)/token" if k else "")
            marker = "." if model == "primary" else "x"
            ax.scatter(*zip(*pts, strict=True), s=4, marker=marker, alpha=0.5, color=color, label=label)
        rejected = [r["scheduled"] for r in records if r.get("status") in ("rejected", "deferred")]
        if rejected:
            ax.scatter(rejected, np.zeros(len(rejected)), s=6, color="red", marker="|", label="rejected / deferred")
        ax.set(xlabel="scheduled arrival (s)", title=f"{policy}: {pattern}" if len(policies) > 1 else pattern)
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("step budget given")
    for ax in grid.flat:
        if ax.get_legend_handles_labels()[0]:  # a run without the controller has nothing to label
            ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
