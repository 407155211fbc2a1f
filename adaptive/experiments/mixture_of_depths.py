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
from pathlib import Path

from adaptive import config as config_lib
from adaptive.experiments.lm_scoring import compare, print_rows, training_flops_per_token


def isoflop_steps(base_steps: int, spec: str, overrides: list[str]) -> int:
    mod = config_lib.load(spec, overrides)
    dense = dataclasses.replace(mod, lm=dataclasses.replace(mod.lm, mod_capacity=0.0))
    return round(base_steps * training_flops_per_token(dense) / training_flops_per_token(mod))


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
    print_rows(compare({"dense": args.dense, "mod": args.mod}, args.json, args.limit, "mixture_of_depths"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
