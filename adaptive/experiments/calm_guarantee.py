"""The CALM guarantee experiment's scoring (experiments/calm_guarantee):

    python -m adaptive.experiments.calm_guarantee --workdir RUN --json OUT [--windows N] [--draws D]

For a run trained with exits, N windows of the validation split (spread over it) and of the
test split are scored at every candidate threshold of adaptive.evaluation.exit_risk.GRID, at
the token level (teacher forced) and at the sequence level (greedy generations of NEW_TOKENS
from the first PROMPT bytes of --sequences windows). Then, for each level and delta: D times,
draw CALIBRATION validation windows at random (at most a quarter of those scored), certify a
threshold by Learn-then-Test at epsilon, and measure on every test window whether the exit
model's disagreement with the full model stayed within delta. One JSON row per (level, delta):
how often the guarantee held, the thresholds chosen, and the test blocks per token they bought
(the speedup in blocks: depth over blocks). The per-window scores are written beside OUT (`<OUT stem>-scores.npz`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from adaptive.evaluation import exit_risk
from adaptive.inference.restore import load_run
from adaptive.workdir.runinfo import write_atomic

EPSILON = 0.1
DELTAS = {"token": (0.02, 0.05, 0.1), "sequence": (0.1, 0.2, 0.3)}
PROMPT, NEW_TOKENS = 64, 32
CALIBRATION = 256  # windows per draw


def score(
    workdir: Path, out: Path, windows: int, draws: int, calibration: int = CALIBRATION, sequences: int | None = None
) -> list[dict]:
    """`windows` of each split at the token level, `sequences` (default: as many) generated from;
    each draw calibrates on `calibration` validation windows (a quarter of the sequences' at most,
    so that draws differ)."""
    run = load_run(workdir, language_model=True)
    grid, sequences = exit_risk.GRID, sequences or windows
    scores = {
        "token": {s: exit_risk.agreement(run, s, grid, limit=windows) for s in ("validation", "test")},
        "sequence": {
            s: exit_risk.sequence_agreement(run, s, grid, prompt=PROMPT, new_tokens=NEW_TOKENS, limit=sequences)
            for s in ("validation", "test")
        },
    }
    rows = []
    for level, deltas in DELTAS.items():
        validation, test = scores[level]["validation"], scores[level]["test"]
        per_draw = min(calibration, max(1, len(validation.agree_WxK) // 4))
        for delta in deltas:
            result = exit_risk.guarantee_draws(validation, test, delta, EPSILON, windows=per_draw, draws=draws)
            certified = [t for t in result["thresholds"] if t != exit_risk.NO_EXITS]
            rows.append(
                {
                    "level": level,
                    "delta": delta,
                    "epsilon": EPSILON,
                    "draws": draws,
                    "calibration_windows": per_draw,
                    "test_windows": len(test.agree_WxK),
                    "held": result["held"],
                    "certified_share": len(certified) / draws,
                    "threshold_median": float(np.median(certified)) if certified else None,
                    "test_blocks": result["test_blocks_mean"],
                    "speedup_blocks": run.cfg.model.depth / result["test_blocks_mean"],
                    "step": run.step,
                }
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{lv}_{s}_{k}": getattr(a, k) for lv, d in scores.items() for s, a in d.items() for k in a._fields}
    np.savez_compressed(out.with_name(f"{out.stem}-scores.npz"), **arrays)
    # last and whole: `adaptive reproduce` takes an existing OUT as this command finished
    write_atomic(out, json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--windows", type=int, default=1024, help="windows of each split scored")
    parser.add_argument("--draws", type=int, default=500, help="random calibration draws per delta")
    parser.add_argument("--calibration", type=int, default=CALIBRATION, help="validation windows per draw")
    parser.add_argument("--sequences", type=int, help="windows of each split generated from (default: --windows)")
    args = parser.parse_args(argv)
    for row in score(args.workdir, args.json, args.windows, args.draws, args.calibration, args.sequences):
        print(
            f"{row['level']:>8} delta {row['delta']:g}: held in {row['held']:.3f} of {row['draws']} draws "
            f"(bar {1 - row['epsilon']:g}), test blocks {row['test_blocks']:.2f} ({row['speedup_blocks']:.2f}x fewer)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
