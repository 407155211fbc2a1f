#!/usr/bin/env bash
# MoE vs a dense network of the same active FLOPs on MNIST-1D (vectors and sequences), a
# capacity-factor sweep, and expert usage with and without the load-balancing loss.
# Usage: experiments/moe_vs_dense/run.sh [OUT]. Thin: `adaptive train` per point, `adaptive report`.
set -euo pipefail
out=${1:-runs/moe_vs_dense}
here=$(dirname "$0")
train() { adaptive train --config "configs/moe.py$1" --config.logging.wandb=disabled --workdir "$out/$2" "${@:3}"; }

train "" moe
train :dense dense
for seed in 1 2; do
  train "" "moe-s$seed" --config.seed="$seed"
  train :dense "dense-s$seed" --config.seed="$seed"
done
train :seq seq-moe
train :seq_dense seq-dense
for cf in 0.5 0.75 1.0 2.0; do
  train "" "moe-cf$cf" --config.moe.capacity_factor="$cf"
done
train "" moe-no-balance --config.moe.balance_weight=0
adaptive report "$out"/dense "$out"/dense-s1 "$out"/dense-s2 "$out"/moe "$out"/moe-s1 "$out"/moe-s2 \
  --markdown "$here/moe_vs_dense.md"
adaptive report "$out"/seq-dense "$out"/seq-moe --markdown "$here/moe_vs_dense_sequences.md"
adaptive report "$out"/moe-cf0.5 "$out"/moe-cf0.75 "$out"/moe-cf1.0 "$out"/moe "$out"/moe-cf2.0 \
  --markdown "$here/capacity_sweep.md"
adaptive report "$out"/moe "$out"/moe-no-balance --markdown "$here/balance.md" --usage "$here/expert_usage.png"
