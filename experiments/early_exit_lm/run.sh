#!/usr/bin/env bash
# Early exit in a byte-level language model (CALM): train one model with exits and exit
# classifiers on pystdlib, sweep every confidence measure's thresholds on validation, read the
# test split once at each measure's chosen threshold.
# Usage: experiments/early_exit_lm/run.sh [--tiny] SEED OUT JSON
#   OUT: the run's workdir (rerunning resumes it); JSON: one row per confidence measure
#   (adaptive.experiments.early_exit_lm), with its validation sweep and plot beside it.
#   --tiny: configs/lm.py:tiny (seconds of training, 64 windows scored): a check that the
#   pipeline runs end to end, not a measurement.
# Full: 4 blocks of width 128, windows of 128 bytes, 1200 steps of 16 windows (about 6 min of
# training on a 2-core machine) and 1024 windows of each split scored (about 4 min).
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
seed=$1 out=$2 json=$3
exits=(--config.lm.exits=true --config.lm.confidence=classifier "--config.seed=$seed" --config.logging.wandb=disabled)
if [ "$tiny" = true ]; then
  adaptive train --config configs/lm.py:tiny --workdir "$out" "${exits[@]}"
  limit=64
else
  adaptive train --config configs/lm.py --workdir "$out" "${exits[@]}" \
    --config.data.window=128 --config.train.batch_size=16 --config.train.steps=1200 --config.train.eval_every=600
  limit=1024
fi
python3 -m adaptive.experiments.early_exit_lm --workdir "$out" --json "$json" --limit "$limit"
