#!/usr/bin/env bash
# `moe.priority` top1 vs own on the capacity sweep, 3 seeds each, then every run scored once on
# test and the paired differences written to priority_rules.json (priority_rules.py).
# Usage: experiments/moe_vs_dense/priority_rules.sh [OUT]   (from the repository root)
set -euo pipefail
out=${1:-runs/priority_rules}
here=$(dirname "$0")
adaptive=${ADAPTIVE:-adaptive}
for cf in 0.5 0.75 1.0 1.25; do
  for seed in 0 1 2; do
    for rule in top1 own; do
      dir="$out/moe-cf$cf-$rule-s$seed"
      if [ ! -f "$dir/run.json" ] || ! ls "$dir"/eval/test-step*.json >/dev/null 2>&1; then
        rm -rf "$dir"
        $adaptive train --config configs/moe.py --config.logging.wandb=disabled --workdir "$dir" \
          --config.moe.capacity_factor="$cf" --config.moe.priority="$rule" --config.seed="$seed"
        $adaptive eval --workdir "$dir" --split test
      fi
    done
  done
done
${PYTHON:-python3} "$here/priority_rules.py" "$out" "$here/priority_rules.json"
