#!/usr/bin/env bash
# CALM's risk-controlled exit thresholds: train one model with exits on pystdlib, score every
# window of validation and test at every candidate threshold (token level, teacher forced; and
# sequence level, greedy generations), then certify thresholds on random validation draws and
# check each on the test windows.
# Usage: experiments/calm_guarantee/run.sh [--tiny] SEED OUT JSON
#   OUT: the run's workdir (rerunning resumes it); JSON: one row per (level, delta)
#   (adaptive.experiments.calm_guarantee), the per-window scores beside it.
#   --tiny: configs/lm.py:tiny, 32 windows, 20 draws: a pipeline check, not a measurement.
# Full: 4 blocks of width 128, windows of 128 bytes, 1200 steps of 16 windows (about 6 min on a
# 2-core machine); 1024 windows of each split scored at 48 thresholds, 512 generated from; 500
# draws of 256 windows (token level) and 128 (sequence level).
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
seed=$1 out=$2 json=$3
exits=(--config.lm.exits=true "--config.seed=$seed" --config.logging.wandb=disabled)
if [ "$tiny" = true ]; then
  adaptive train --config configs/lm.py:tiny --workdir "$out" "${exits[@]}"
  python3 -m adaptive.experiments.calm_guarantee --workdir "$out" --json "$json" --windows 32 --draws 20
else
  adaptive train --config configs/lm.py --workdir "$out" "${exits[@]}" \
    --config.data.window=128 --config.train.batch_size=16 --config.train.steps=1200 --config.train.eval_every=600
  python3 -m adaptive.experiments.calm_guarantee --workdir "$out" --json "$json" --windows 1024 --sequences 512 \
    --draws 500
fi
