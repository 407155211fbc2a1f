#!/usr/bin/env bash
# The budget as a ceiling (the default penalty): ACT at 25, 50 and 75% of its cap's FLOPs on 3
# seeds, set beside the static networks of `adaptive reproduce budget_targeting` on accuracy
# against *realized* compute. Nothing is chosen here: every point is scored once on the test split.
# Usage: experiments/budget_targeting/ceiling_sweep.sh [OUT] [REPRODUCE_DIR]
set -euo pipefail
out=${1:-runs/budget_ceiling}
statics=${2:-runs/reproduce/budget_targeting}
here=$(dirname "$0")
for task in parity mnist1d; do
  adaptive sweep --config "configs/budget.py:$task-ceiling" --workdir "$out/$task" --parallel 1
  runs=("$out/$task"/*-seed*/ "$statics"/*-budget-"$task"/*-static*/)
  adaptive report "${runs[@]}" --split test --markdown "$here/ceiling_$task.md" --pareto "$here/ceiling_${task}_pareto.png"
done
