"""`adaptive report DIR... [--split S] [--plot PNG] [--markdown MD]`: compare finished runs.

One row per run with what distinguishes it (policy, its hyper-parameters, depth) and its final
eval accuracy and compute; `--split` adds accuracy and compute on other splits (e.g. parity's
extrapolation range in `test`); `--plot` draws compute and accuracy against difficulty.
"""

from __future__ import annotations

from pathlib import Path

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
    return {"method": method, "kind": cfg.model.kind}


def _final_eval(workdir: Path) -> dict:
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "eval"]
    if not rows:
        raise RunError(f"{workdir} has no eval yet")
    return rows[-1]


def report(workdirs: list[str], *, splits: list[str], plot: str | None, markdown: str | None) -> list[dict]:
    rows, curves = [], []
    for workdir in map(Path, workdirs):
        cfg = load_config(workdir)
        final = _final_eval(workdir)
        row = {
            "run": workdir.name,
            **_describe(cfg),
            "step": final["step"],
            f"{cfg.data.eval_split}_accuracy": final["eval/accuracy"],
            f"{cfg.data.eval_split}_steps": final["eval/steps_mean"],
        }
        curves.append((workdir.name, cfg.data.eval_split, final))
        for split in splits:
            metrics, _ = evaluate_run(workdir, split=split)
            row[f"{split}_accuracy"], row[f"{split}_steps"] = metrics["eval/accuracy"], metrics["eval/steps_mean"]
            curves.append((workdir.name, split, metrics))
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print_table(rows, columns)
    if markdown:
        Path(markdown).write_text(markdown_table(rows, columns))
        print(f"wrote {markdown}")
    if plot:
        _plot_by_difficulty(curves, plot)
        print(f"wrote {plot}")
    return rows


def _plot_by_difficulty(curves: list[tuple[str, str, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_steps, ax_acc) = plt.subplots(1, 2, figsize=(14, 4.8))
    for name, split, metrics in curves:
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
