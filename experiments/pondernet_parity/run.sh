#!/usr/bin/env bash
# PonderNet's extrapolation test on parity: train on difficulty 1..8, test on 9..16.
# Usage: experiments/pondernet_parity/run.sh [OUT]. Thin: `adaptive train` per point, `adaptive report`.
set -euo pipefail
out=${1:-runs/pondernet_parity}
here=$(dirname "$0")
train() {
  adaptive train --config configs/parity.py --config.logging.wandb=disabled --workdir "$out/$1" \
    --config.data.train_difficulty=1,8 --config.data.eval_difficulty=9,16 --config.data.eval_split=validation "${@:2}"
}

train pondernet-lp0.2 --config.halting.policy=pondernet --config.halting.lambda_p=0.2
train pondernet-lp0.1 --config.halting.policy=pondernet --config.halting.lambda_p=0.1
train act-tau3e-3 --config.halting.policy=act --config.halting.tau=3e-3
train static-depth1 --config.halting.policy=none --config.model.depth=1
train static-depth10 --config.halting.policy=none --config.model.depth=10
adaptive report "$out"/pondernet-lp0.2 "$out"/pondernet-lp0.1 "$out"/act-tau3e-3 "$out"/static-depth1 \
  "$out"/static-depth10 --split test --markdown "$here/results.md" --plot "$here/by_difficulty.png"
