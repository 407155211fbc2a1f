"""The language-model budget experiment's scoring (experiments/lm_budget):

    python -m adaptive.experiments.lm_budget --workdir RUN --json OUT [--limit WINDOWS]

Reads a run trained with a FLOPs-per-token budget once on the test split, at the operating
point it was trained for (exits at `lm.exit_threshold`, MoD blocks routed by their causal
predictors, every expert a top-p router asks for, ACT halting by its rule), and writes one JSON
row: the target, the FLOPs per token decoding spent, their ratio, bits per byte, and what the
run's last training window and last validation evaluation reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive.experiments.lm_scoring import last_logged, test_point


def score(workdir: Path, out: Path, limit: int | None) -> dict:
    run, point = test_point(workdir, limit, "lm_budget")
    cfg = run.cfg
    row = {
        "unit": cfg.budget.unit,
        "target": cfg.budget.target,
        "flops_per_token": point["flops_per_token"],
        "ratio": point["flops_per_token"] / cfg.budget.target,
        "bits_per_byte": point["bits_per_byte"],
        "blocks_mean": point["blocks_mean"],
        "mod_share": point["mod_share"],
        "experts_per_token": point["experts_per_token"],
        "train_realized": last_logged(run.workdir, "budget/realized_compute"),
        "validation_flops_per_token": last_logged(run.workdir, "eval/flops_per_token"),
        "tokens": point["tokens"],
        "step": run.step,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="windows of the test split read (default: all)")
    args = parser.parse_args(argv)
    row = score(args.workdir, args.json, args.limit)
    print(
        f"test FLOPs per token {row['flops_per_token']:,.0f} against the target {row['target']:,.0f} "
        f"({row['ratio']:.3f}x), bits per byte {row['bits_per_byte']:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
