#!/usr/bin/env bash
# A FLOPs-per-token budget on a byte-level language model: train with the budget's two-sided
# augmented Lagrangian (landing on the target), then read the test split once at the operating
# point trained for (adaptive.experiments.lm_budget).
# Usage: experiments/lm_budget/run.sh [--tiny] MECHANISM SEED OUT JSON
#   MECHANISM: exits (CALM exits, max_prob at 0.9), mod (Mixture-of-Depths, capacity 12.5% on every
#   other block, routed by its causal predictor), topp (top-p experts, 8 of them, at most 4 a
#   token), act (ACT per position over one shared block, at most 4 steps).
#   --tiny: configs/lm.py:tiny (seconds), 64 test windows: a pipeline check, not a measurement.
# Full: 4 blocks of width 128 on windows of 128 bytes, 600 steps of 16 windows (about 3 min on a
# 2-core machine; MoD 1200 steps: at 600 its multiplier had not yet pulled the predictors up to
# the target, 0.9672 of it on validation), 1024 test windows. Targets (FLOPs per token) lie between the least and the
# most each model can spend at this shape (adaptive.compute.lm_flops).
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
mechanism=$1 seed=$2 out=$3 json=$4
steps=600
case $mechanism in
  exits) knobs=(--config.lm.exits=true) target=1.3e6 tiny_target=8e4 ;;
  mod) knobs=(--config.lm.mod_capacity=0.125) target=1.23e6 tiny_target=5.5e4 steps=1200 ;;
  topp) knobs=(--config.moe.enabled=true --config.moe.router=top_p --config.moe.renormalize=false --config.moe.k=4)
    target=1.45e6 tiny_target=6.5e4 ;;
  act) knobs=(--config.halting.policy=act --config.halting.max_steps=4) target=1.25e6 tiny_target=9e4 ;;
  *) echo "run.sh: MECHANISM is exits, mod, topp or act, not '$mechanism'" >&2; exit 2 ;;
esac
budget=(--config.budget.unit=flops --config.budget.two_sided=true "--config.seed=$seed" --config.logging.wandb=disabled)
if [ "$tiny" = true ]; then
  adaptive train --config configs/lm.py:tiny --workdir "$out" "${knobs[@]}" "${budget[@]}" "--config.budget.target=$tiny_target"
  limit=64
else
  adaptive train --config configs/lm.py --workdir "$out" "${knobs[@]}" "${budget[@]}" "--config.budget.target=$target" \
    --config.data.window=128 --config.train.batch_size=16 "--config.train.steps=$steps" "--config.train.eval_every=$steps"
  limit=1024
fi
python3 -m adaptive.experiments.lm_budget --workdir "$out" --json "$json" --limit "$limit"
