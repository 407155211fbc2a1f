#!/usr/bin/env bash
# Serving under a latency SLA: train the adaptive model and the small fallback, export both,
# then `adaptive bench serve` (four policies, four arrival patterns, one run).
# Usage: experiments/serving/run.sh [OUT]. Thin: `adaptive train`, `export`, `bench serve`.
set -euo pipefail
out=${1:-runs/serve}
here=$(dirname "$0")
train() { adaptive train --config configs/mnist1d.py --config.logging.wandb=disabled --workdir "$out/$1" "${@:2}"; }

# A shared residual block of width 2048 applied up to 8 times under ACT, trained to a mean of 4
# steps with request caps of 2, 4 or 8 drawn per example (so it answers at any budget).
train primary2048 --config.model.kind=mlp --config.model.hidden=2048 --config.model.share_weights=true \
  --config.halting.policy=act --config.halting.max_steps=8 --config.halting.tau=0 --config.budget.target=4 \
  --config.budget.requests=2,4,8 --config.budget.request_weights=1,1,2 --config.train.steps=600 \
  --config.train.batch_size=64 --config.train.eval_batch_size=250 --config.train.eval_every=600
train small --config.model.kind=mlp --config.model.hidden=128 --config.halting.policy=none \
  --config.model.depth=2 --config.train.steps=1500
adaptive export --workdir "$out/primary2048" --out "$out/primary2048.art"
adaptive export --workdir "$out/small" --out "$out/small.art"
adaptive bench serve --artifact "$out/primary2048.art" --small "$out/small.art" --sla-ms 50 --max-batch 16 \
  --duration 6 --out "$out/bench" --json "$here/serve.json"
cp "$out/bench/latency_cdf.png" "$out/bench/budget_over_time.png" "$out/bench/grouping.json" "$here/"
