#!/usr/bin/env bash
# Precision and pruning as operating points: train a model, then build, time and score every point
# (adaptive.experiments.quantize_prune): fp32, bf16, int8, int4, each at 0 and 50% pruning.
# Usage: experiments/quantize_prune/run.sh [--tiny] MODEL SEED OUT JSON
#   MODEL: mnist1d (configs/mnist1d.py: a static 3-block MLP, 4000 steps), sut (configs/sut.py:
#   parity's Sparse Universal Transformer, ACT over one block with 4 experts, 2000 steps), lm
#   (configs/lm.py: the byte-level language model, 4 blocks of width 128, 600 steps of 16 windows).
#   --tiny: each config's tiny form and a few examples: a pipeline check, not a measurement.
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
model=$1 seed=$2 out=$3 json=$4
common=("--config.seed=$seed" --config.logging.wandb=disabled)
case $model in
  mnist1d) config=configs/mnist1d.py full=() limit=() ;;
  sut) config=configs/sut.py full=(--config.train.steps=2000) limit=(--limit 2048) ;;
  lm) config=configs/lm.py limit=(--limit 256) batch=(--batch 8)
    full=(--config.data.window=128 --config.train.batch_size=16 --config.train.steps=600 --config.train.eval_every=600) ;;
  *) echo "run.sh: MODEL is mnist1d, sut or lm, not '$model'" >&2; exit 2 ;;
esac
if [ "$tiny" = true ]; then
  adaptive train --config "$config:tiny" --workdir "$out" "${common[@]}"
  python3 -m adaptive.experiments.quantize_prune --workdir "$out" --json "$json" --limit 64 --repeats 3 \
    --fine-tune-steps 2 ${batch[@]+"${batch[@]}"}
else
  adaptive train --config "$config" --workdir "$out" "${common[@]}" ${full[@]+"${full[@]}"}
  python3 -m adaptive.experiments.quantize_prune --workdir "$out" --json "$json" ${limit[@]+"${limit[@]}"} \
    ${batch[@]+"${batch[@]}"}
fi
