"""The early-exit language model experiment's scoring (experiments/early_exit_lm):

    python -m adaptive.experiments.early_exit_lm --workdir RUN --json OUT [--limit WINDOWS]

For a run trained with exits (and exit classifiers, so that every measure can be read), each
confidence measure is swept over its thresholds on the validation split; per measure the chosen
threshold is the one with the fewest FLOPs per token whose bits per byte stay within TOLERANCE
of running every block (validation; when none does, the most conservative threshold). The test
split is then read once, at the chosen thresholds and at every block. One JSON row per measure:
its test bits per byte and blocks per token, their ratios to every block, and blocks per token
by the class of the token predicted. The validation sweep is written beside OUT
(`<OUT stem>-validation.json`) with a plot of bits per byte against blocks per token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive.data.byte_vocab import TOKEN_CLASSES
from adaptive.evaluation.lm_report import Knobs, lm_report, operating_points
from adaptive.inference.restore import load_run
from adaptive.workdir.runinfo import write_atomic

TOLERANCE = 0.05  # bits per byte may rise by 5% over every block's on validation
MEASURES = ("max_prob", "margin", "state_saturation", "classifier")


def choose(points: list[dict], measure: str) -> tuple[dict, bool]:
    """(the chosen validation point of `measure`, whether it is within the tolerance)."""
    full = next(p for p in points if p["threshold"] is None)
    own = [p for p in points if p["confidence"] == measure]
    within = [p for p in own if p["bits_per_byte"] <= (1 + TOLERANCE) * full["bits_per_byte"]]
    if within:
        return min(within, key=lambda p: p["flops_per_token"]), True
    return max(own, key=lambda p: p["threshold"]), False


def score(workdir: Path, out: Path, limit: int | None) -> list[dict]:
    run = load_run(workdir, language_model=True)
    measures = tuple(m for m in MEASURES if m != "classifier" or run.cfg.lm.confidence == "classifier")
    eval_dir = run.workdir / "eval" / "early_exit_lm"
    validation, plots = lm_report(run, "validation", eval_dir, limit=limit, points=operating_points(run.cfg, measures))
    chosen = {m: choose(validation["points"], m) for m in measures}
    knobs = [Knobs()] + [Knobs(threshold=p["threshold"], confidence=m) for m, (p, _) in chosen.items()]
    test, _ = lm_report(run, "test", eval_dir / "test", limit=limit, points=knobs)  # read once
    full, rows = test["points"][0], []
    for (measure, (picked, within)), point in zip(chosen.items(), test["points"][1:], strict=True):
        rows.append(
            {
                "measure": measure,
                "threshold": point["threshold"],
                "within_tolerance_on_validation": within,
                "bits_per_byte": point["bits_per_byte"],
                "full_bits_per_byte": full["bits_per_byte"],
                "bpb_ratio": point["bits_per_byte"] / full["bits_per_byte"],
                "blocks_mean": point["blocks_mean"],
                "blocks_ratio": point["blocks_mean"] / full["blocks_mean"],
                "flops_ratio": point["flops_per_token"] / full["flops_per_token"],
                "validation_bits_per_byte": picked["bits_per_byte"],
                "validation_blocks_mean": picked["blocks_mean"],
                **{f"blocks_{name}": point["blocks_by_class"][name] for name in TOKEN_CLASSES},
                "tokens": point["tokens"],
                "step": run.step,
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    side = out.with_name(f"{out.stem}-validation.json")
    side.write_text(json.dumps(validation, indent=2) + "\n")
    _plot(validation["points"], measures, out.with_name(f"{out.stem}-validation.png"))
    # last and whole: `adaptive reproduce` takes an existing OUT as this command finished
    write_atomic(out, json.dumps(rows, indent=2) + "\n")
    return rows


def _plot(points: list[dict], measures: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    full = next(p for p in points if p["threshold"] is None)
    ax.axhline(full["bits_per_byte"], color="gray", lw=0.8, ls="--", label="every block")
    ax.axhline((1 + TOLERANCE) * full["bits_per_byte"], color="gray", lw=0.8, ls=":", label=f"+{TOLERANCE:.0%}")
    for measure in measures:
        own = sorted((p for p in points if p["confidence"] == measure), key=lambda p: p["blocks_mean"])
        ax.plot([p["blocks_mean"] for p in own], [p["bits_per_byte"] for p in own], "o-", label=measure)
    ax.set_xlabel("blocks per token (mean)")
    ax.set_ylabel("bits per byte (validation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="windows of each split read (default: all)")
    args = parser.parse_args(argv)
    for row in score(args.workdir, args.json, args.limit):
        print(
            f"{row['measure']:>16} at {row['threshold']:g}: bits per byte {row['bits_per_byte']:.4f} "
            f"({row['bpb_ratio']:.3f}x every block), blocks {row['blocks_mean']:.2f} ({row['blocks_ratio']:.3f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
