"""`adaptive calibrate-exits`: an exit threshold with a distribution-free consistency guarantee.

    adaptive calibrate-exits --workdir runs/lm-exits --delta 0.1 --epsilon 0.1

Scores the run's validation windows at every candidate threshold (adaptive.evaluation.exit_risk),
certifies the lowest threshold by Learn-then-Test with fixed-sequence testing, prints each tested
threshold, and writes DIR/exit_calibration.json, which `adaptive generate` then uses by default.
"""

from __future__ import annotations

import math

from adaptive.evaluation import exit_risk
from adaptive.evaluation.tables import print_table
from adaptive.inference.restore import load_run
from adaptive.workdir import exit_calibration
from adaptive.workdir.config_file import RunError, load_config


def run(args, overrides: list[str]) -> int:
    for name, value in (("--delta", args.delta), ("--epsilon", args.epsilon)):
        if not 0 < value < 1:
            raise RunError(f"{name}={value} must be in (0, 1)")
    if args.windows < 1:
        raise RunError(f"--windows={args.windows} must be >= 1")
    cfg = load_config(args.workdir)  # checked before the run loads
    if cfg.model.kind != "lm":
        raise RunError(
            f"{args.workdir} holds a classifier (model.kind={cfg.model.kind!r}); exits are a language model's"
        )
    if not cfg.lm.exits:
        raise RunError(f"{args.workdir} has no exits (lm.exits=false): there is no threshold to calibrate")
    exit_calibration.check_writable(args.workdir)  # before the scoring, which takes a while
    trained = load_run(args.workdir, args.step, language_model=True)
    try:
        scores = exit_risk.agreement(trained, "validation", exit_risk.GRID, limit=args.windows)
    except ValueError as e:
        raise RunError(str(e)) from None
    result = exit_risk.calibrate_threshold(scores, args.delta, args.epsilon)
    rows = []
    highest_first = sorted(range(len(scores.thresholds_K)), key=lambda k: -scores.thresholds_K[k])
    for k, p in zip(highest_first, result.p_values, strict=False):  # testing stops at the first failure
        rows.append(
            {
                "threshold": float(scores.thresholds_K[k]),
                "disagreement": round(float(1 - scores.agree_WxK[:, k].mean()), 4),
                "blocks": round(float(scores.blocks_WxK[:, k].mean()), 3),
                "p_value": float(f"{p:.3g}"),
                "certified": bool(p <= args.epsilon),  # p may be a numpy float
            }
        )
    print_table(rows, ["threshold", "disagreement", "blocks", "p_value", "certified"])
    record = {
        "threshold": result.threshold,
        "delta": args.delta,
        "epsilon": args.epsilon,
        "windows": result.windows,
        "split": "validation",
        "step": trained.step,
        "confidence": trained.cfg.lm.confidence,
        "validation_disagreement": result.risk,
        "validation_blocks": None if math.isnan(result.blocks) else result.blocks,
        "depth": trained.cfg.model.depth,
        "tested": rows,
    }
    try:
        previous, damaged = exit_calibration.read(trained.workdir), False
    except ValueError:
        previous, damaged = None, True  # kept beside this one, as any replaced calibration is
    path, kept = exit_calibration.write(trained.workdir, record)
    if previous is not None:  # the newest calibration is what generate and export read
        print(f"replaces the previous calibration: {exit_calibration.describe(previous)} (kept as {kept.name})")
    elif damaged:
        print(f"replaces an unreadable previous calibration (kept as {kept.name})")
    if result.threshold == exit_risk.NO_EXITS:
        print(f"no threshold certified at delta={args.delta}, epsilon={args.epsilon}: tokens run every block")
    else:
        print(
            f"threshold {result.threshold:g}: with probability >= {1 - args.epsilon:g}, exits agree with the full "
            f"model on >= {1 - args.delta:g} of tokens ({result.windows} windows: disagreement "
            f"{result.risk:.4f}, {result.blocks:.2f} of {trained.cfg.model.depth} blocks per token)"
        )
    print(f"wrote {path}")
    return 0
