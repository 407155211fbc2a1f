#!/usr/bin/env bash
# Graves' parity with ACT: a tau sweep against static RNNs, 3 seeds each.
# Usage: experiments/act_parity/run.sh [OUT]   (SEEDS="0 1 2" by default)
# Thin by design: each point is one `adaptive train`; `adaptive report` makes the table and plot.
set -euo pipefail
out=${1:-runs/act_parity}
here=$(dirname "$0")
seeds=${SEEDS:-0 1 2}
train() { adaptive train --config configs/parity.py --config.logging.wandb=disabled --workdir "$out/$1" "${@:2}"; }

for seed in $seeds; do
  train "static-depth1-s$seed" --config.seed="$seed" --config.halting.policy=none --config.model.depth=1
  train "static-depth10-s$seed" --config.seed="$seed" --config.halting.policy=none --config.model.depth=10
  for tau in 1e-3 2e-3 3e-3 5e-3 1e-2; do
    train "act-tau$tau-s$seed" --config.seed="$seed" --config.halting.tau="$tau"
  done
done
runs=()
for name in static-depth1 static-depth10 act-tau1e-3 act-tau2e-3 act-tau3e-3 act-tau5e-3 act-tau1e-2; do
  for seed in $seeds; do runs+=("$out/$name-s$seed"); done
done
adaptive report "${runs[@]}" --markdown "$here/report.md" --plot "$here/steps_by_difficulty.png"
