"""The Mixture-of-Depths experiment's arithmetic and scoring (experiments/mixture_of_depths):

    python -m adaptive.experiments.mixture_of_depths steps --base-steps N [--config SPEC] [--config.KEY=VALUE ...]
    python -m adaptive.experiments.mixture_of_depths score --dense RUN --mod RUN --json OUT [--limit W]

`steps` prints how many training steps the MoD model (the overrides given) takes for the
training FLOPs of N steps of the same model without MoD (SPEC, default configs/lm.py, with the
same overrides but lm.mod_capacity=0): N * dense / MoD training FLOPs per token (adaptive.compute.lm_flops,
which counts top-k routing's gathered blocks at their capacity). `score` reads both runs once on
the test split (MoD routed by its causal predictor, as decoding routes) and writes two rows:
bits per byte, FLOPs per token of a forward pass, training FLOPs in all; the MoD row also holds
its differences to the dense row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from adaptive import config as config_lib
from adaptive.compute.lm_flops import lm_flops
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.experiments.lm_scoring import test_point

def training_flops_per_token(cfg) -> float:
    return lm_flops(cfg, cfg.data.window, VOCAB_SIZE, batch=cfg.train.batch_size, train=True).full()


def isoflop_steps(base_steps: int, spec: str, overrides: list[str]) -> int:
    mod = config_lib.load(spec, overrides)
    dense = dataclasses.replace(mod, lm=dataclasses.replace(mod.lm, mod_capacity=0.0))
    return round(base_steps * training_flops_per_token(dense) / training_flops_per_token(mod))


def score(dense_dir: Path, mod_dir: Path, out: Path, limit: int | None) -> list[dict]:
    rows = []
    for model, workdir in (("dense", dense_dir), ("mod", mod_dir)):
        run, point = test_point(workdir, limit, "mixture_of_depths")
        per_token = training_flops_per_token(run.cfg)
        tokens = run.step * run.cfg.train.batch_size * run.cfg.data.window
        rows.append(
            {
                "model": model,
                "bits_per_byte": point["bits_per_byte"],
                "flops_per_token": point["flops_per_token"],  # a forward pass, as decoding routes
                "train_flops": per_token * tokens,
                "train_steps": run.step,
                "mod_share": point["mod_share"],
                "tokens": point["tokens"],
            }
        )
    dense, mod = rows
    mod["bpb_minus_dense"] = mod["bits_per_byte"] - dense["bits_per_byte"]
    mod["forward_flops_ratio"] = mod["flops_per_token"] / dense["flops_per_token"]
    mod["train_flops_ratio"] = mod["train_flops"] / dense["train_flops"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    steps = commands.add_parser("steps", help="the MoD model's steps at the dense model's training FLOPs")
    steps.add_argument("--base-steps", type=int, required=True)
    steps.add_argument("--config", default="configs/lm.py")
    scoring = commands.add_parser("score", help="both runs on the test split, once")
    scoring.add_argument("--dense", type=Path, required=True)
    scoring.add_argument("--mod", type=Path, required=True)
    scoring.add_argument("--json", type=Path, required=True)
    scoring.add_argument("--limit", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)
    if args.command == "steps":
        print(isoflop_steps(args.base_steps, args.config, overrides))
        return 0
    for row in score(args.dense, args.mod, args.json, args.limit):
        flops = f"FLOPs per token {row['flops_per_token']:,.0f}"
        print(f"{row['model']:>5}: bits per byte {row['bits_per_byte']:.4f}, {flops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
