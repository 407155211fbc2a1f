"""`adaptive report DIR... [--split S] [--plot PNG] [--markdown MD]`: compare finished runs.

One row per run with what distinguishes it (policy, its hyper-parameters, depth) and its final
eval accuracy and compute; `--split` adds accuracy and compute on other splits (e.g. parity's
extrapolation range in `test`); `--plot` draws compute and accuracy against difficulty.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptive import config as config_lib
from adaptive.evaluate import evaluate_run
from adaptive.metrics import read_jsonl
from adaptive.runs import RunError, load_config
from adaptive.tables import markdown_table, print_table


def _describe(cfg) -> dict:
    h = cfg.halting
    if h.policy == "none":
        method = f"static depth {cfg.model.depth}"
    elif h.policy == "act":
        method = f"ACT tau={h.tau:g}"
    elif h.policy == "pondernet":
        method = f"PonderNet beta={h.beta:g} lambda_p={h.lambda_p:g}"
    else:
        method = f"early exit {h.confidence}>={h.exit_threshold:g}"
    if cfg.moe.enabled:
        routing = f"top-{cfg.moe.k}" if cfg.moe.router == "top_k" else "expert choice"
        method += f" + MoE {cfg.moe.num_experts}x {routing} cf={cfg.moe.capacity_factor:g}"
        if cfg.moe.balance_weight == 0:
            method += " no-balance-loss"
    return {"method": method, "kind": cfg.model.kind}


def _final_eval(workdir: Path) -> dict:
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "eval"]
    if not rows:
        raise RunError(f"{workdir} has no eval yet")
    return rows[-1]


def report(
    workdirs: list[str], *, splits: list[str], plot: str | None, markdown: str | None, usage: str | None = None
) -> list[dict]:
    """Prints (and optionally writes) one row per run, then one per group of runs that differ
    only in their seed (mean and range over seeds); the plot shows group means."""
    rows, curves, groups = [], [], {}
    for workdir in map(Path, workdirs):
        cfg = load_config(workdir)
        final = _final_eval(workdir)
        row = {"run": workdir.name, **_describe(cfg), "seed": cfg.seed, "step": final["step"]}
        if cfg.moe.enabled:
            last_train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"][-1]
            row["experts_per_example"] = final.get("eval/experts_mean")
            row["train_drop_fraction"] = last_train.get("moe/drop_fraction")
            row["usage_entropy"] = last_train.get("moe/usage_entropy")
        run_curves = [(cfg.data.eval_split, final)]
        for split in splits:
            run_curves.append((split, evaluate_run(workdir, split=split)[0]))
        for split, metrics in run_curves:
            row[f"{split}_accuracy"], row[f"{split}_steps"] = metrics["eval/accuracy"], metrics["eval/steps_mean"]
        rows.append(row)
        curves.append(run_curves)
        groups.setdefault(_without_seed(cfg), []).append(len(rows) - 1)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print_table(rows, columns)
    text = markdown_table(rows, columns)
    plotted = [(rows[i]["run"], c) for i, c in enumerate(curves)]
    if any(len(members) > 1 for members in groups.values()):
        summary, plotted = _by_seed_groups(rows, curves, list(groups.values()))
        summary_columns = list(dict.fromkeys(k for r in summary for k in r))
        print("\nmean over seeds (min..max):")
        print_table(summary, summary_columns)
        text = markdown_table(summary, summary_columns) + "\nPer run:\n\n" + text
    if markdown:
        Path(markdown).write_text(text)
        print(f"wrote {markdown}")
    if plot:
        _plot_by_difficulty(plotted, plot)
        print(f"wrote {plot}")
    if usage:
        _plot_expert_usage([Path(w) for w in workdirs], usage)
        print(f"wrote {usage}")
    return rows


def _without_seed(cfg) -> str:
    d = config_lib.to_dict(cfg)
    d.pop("seed"), d.pop("name")
    return json.dumps(d, sort_keys=True)


def _by_seed_groups(rows: list[dict], curves: list, groups: list[list[int]]):
    """One summary row and one mean curve per group of runs that differ only in the seed."""
    summary, plotted = [], []
    for members in groups:
        first = rows[members[0]]
        out = {"method": first["method"], "kind": first["kind"], "seeds": len(members)}
        for key in first:
            if key.endswith(("_accuracy", "_steps")):
                values = [rows[i][key] for i in members]
                out[key] = sum(values) / len(values)
                if key.endswith("_accuracy"):
                    out[key + "_range"] = f"{min(values):.3f}..{max(values):.3f}"
        summary.append(out)
        mean_curves = []
        for j, (split, _) in enumerate(curves[members[0]]):
            mean_curves.append((split, _mean_metrics([curves[i][j][1] for i in members])))
        plotted.append((first["method"], mean_curves))
    return summary, plotted


def _mean_metrics(runs: list[dict]) -> dict:
    out = {}
    for key in ("eval/steps_by_difficulty", "eval/accuracy_by_difficulty"):
        if runs[0].get(key):
            columns = zip(*(r[key] for r in runs), strict=True)
            out[key] = [None if None in col else sum(col) / len(col) for col in columns]
    return out


def _plot_by_difficulty(curves: list[tuple[str, list[tuple[str, dict]]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_steps, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.8))
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
        xlabel="difficulty (non-zero entries in the input)",
        ylabel="mean steps used (blocks applied)",
        title="Compute vs difficulty",
    )
    ax_acc.set(
        xlabel="difficulty (non-zero entries in the input)",
        ylabel="accuracy",
        ylim=(0.0, 1.02),
        title="Accuracy vs difficulty",
    )
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    for ax in (ax_steps, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside, not over, the lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_expert_usage(workdirs: list[Path], path: str) -> None:
    """Routing over training: usage entropy per run, and each expert's share of tokens per run."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

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
