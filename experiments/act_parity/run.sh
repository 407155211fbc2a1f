#!/usr/bin/env bash
# Graves' parity with ACT: a tau sweep, against static RNNs. Usage: experiments/act_parity/run.sh [OUT]
# Thin by design: each point is one `adaptive train`; `adaptive report` makes the table and plot.
set -euo pipefail
out=${1:-runs/act_parity}
here=$(dirname "$0")
train() { adaptive train --config configs/parity.py --config.logging.wandb=disabled --workdir "$out/$1" "${@:2}"; }

train static-depth1 --config.halting.policy=none --config.model.depth=1
train static-depth10 --config.halting.policy=none --config.model.depth=10
for tau in 1e-3 2e-3 3e-3 5e-3 1e-2; do
  train "act-tau$tau" --config.halting.tau="$tau"
done
adaptive report "$out"/static-depth1 "$out"/static-depth10 "$out"/act-tau{1e-3,2e-3,3e-3,5e-3,1e-2} \
  --markdown "$here/results.md" --plot "$here/steps_by_difficulty.png"
