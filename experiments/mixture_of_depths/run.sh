#!/usr/bin/env bash
# Mixture-of-Depths at equal training FLOPs: train configs/lm.py without MoD for BASE steps and
# with MoD (capacity 12.5% on every other block) for the steps that cost the same training
# FLOPs, then read both once on the test split (adaptive.experiments.mixture_of_depths).
# Usage: experiments/mixture_of_depths/run.sh [--tiny] BASE SEED OUT JSON
#   --tiny: configs/lm.py:tiny, 64 test windows: a pipeline check, not a measurement.
# Full: 4 blocks of width 128, windows of 128 bytes, batches of 16, 1024 test windows; BASE 300
# takes about 4 min on a 2-core machine, BASE 600 about 8.
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
base=$1 seed=$2 out=$3 json=$4
common=("--config.seed=$seed" --config.logging.wandb=disabled)
if [ "$tiny" = true ]; then
  spec=configs/lm.py:tiny limit=64
else
  spec=configs/lm.py limit=1024
  common+=(--config.data.window=128 --config.train.batch_size=16)
fi
mod=(--config.lm.mod_capacity=0.125 --config.lm.mod_every=2)
steps=$(python3 -m adaptive.experiments.mixture_of_depths steps --base-steps "$base" --config "$spec" "${common[@]}" "${mod[@]}")
adaptive train --config "$spec" --workdir "$out/dense" "${common[@]}" "--config.train.steps=$base" "--config.train.eval_every=$base"
adaptive train --config "$spec" --workdir "$out/mod" "${common[@]}" "${mod[@]}" "--config.train.steps=$steps" \
  "--config.train.eval_every=$steps"
python3 -m adaptive.experiments.mixture_of_depths score --dense "$out/dense" --mod "$out/mod" --json "$json" --limit "$limit"
