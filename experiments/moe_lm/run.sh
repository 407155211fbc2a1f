#!/usr/bin/env bash
# Experts against a dense language model at equal active FLOPs: configs/lm.py as is, and with
# 8 experts (top-2) in every block's feed-forward, each half the dense feed-forward's width, so
# a token's two experts cost what the dense layer costs; both read once on the test split.
# Usage: experiments/moe_lm/run.sh [--tiny] SEED OUT JSON
#   --tiny: configs/lm.py:tiny, 64 test windows: a pipeline check, not a measurement.
# Full: 4 blocks of width 128, windows of 128 bytes, 600 steps of 16 windows each (about 8 min for
# both on a 2-core machine), 1024 test windows.
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
seed=$1 out=$2 json=$3
common=("--config.seed=$seed" --config.logging.wandb=disabled)
if [ "$tiny" = true ]; then
  spec=configs/lm.py:tiny limit=64
else
  spec=configs/lm.py limit=1024
  common+=(--config.data.window=128 --config.train.batch_size=16 --config.train.steps=600 --config.train.eval_every=600)
fi
adaptive train --config "$spec" --workdir "$out/dense" "${common[@]}"
adaptive train --config "$spec" --workdir "$out/moe" "${common[@]}" --config.moe.enabled=true \
  --config.moe.num_experts=8 --config.moe.k=2
python3 -m adaptive.experiments.lm_scoring --json "$json" --limit "$limit" "dense=$out/dense" "moe=$out/moe"
