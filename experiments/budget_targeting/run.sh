#!/usr/bin/env bash
# Training to a compute budget: 25/50/75% of the cap's FLOPs on parity and MNIST-1D, against
# static models of the same compute, then a latency target through a calibrated cost model.
# Usage: experiments/budget_targeting/run.sh [OUT]. Thin: `adaptive train`, `calibrate`, `eval`, `report`.
set -euo pipefail
out=${1:-runs/budget_targeting}
here=$(dirname "$0")
train() { adaptive train --config "configs/budget.py:$1" --config.logging.wandb=disabled --workdir "$out/$2" "${@:3}"; }
static() { train "$1" "$2" --config.halting.policy=none --config.budget.target=None --config.model.depth="$3"; }

for pct in 25 50 75; do train "parity,0.$pct" "parity-budget$pct"; done
train parity,0.75 parity-budget75-hinge --config.budget.penalty=hinge  # the target as a ceiling only
for depth in 5 10 15; do static parity,0.5 "parity-static$depth" "$depth"; done
for pct in 25 50 75; do train "mnist1d,0.$pct" "mnist1d-budget$pct"; done
for depth in 2 4 6; do static mnist1d,0.5 "mnist1d-static$depth" "$depth"; done

adaptive report "$out"/parity-budget{25,50,75} "$out"/parity-budget75-hinge "$out"/parity-static{5,10,15} \
  --markdown "$here/parity.md" --pareto "$here/parity_pareto.png" --plot "$here/parity_by_difficulty.png"
adaptive report "$out"/mnist1d-budget{25,50,75} "$out"/mnist1d-static{2,4,6} \
  --markdown "$here/mnist1d.md" --pareto "$here/mnist1d_pareto.png"

# A latency target: calibrate the 50% model's network on this machine, ask for the latency of
# 8 steps at serving batch 32, train to it, and measure what the trained model takes.
adaptive calibrate --workdir "$out/parity-budget50" --batches 32
target=$(python3 -c "import json,sys; f=json.load(open(sys.argv[1]))['fits']['b32_k0']; \
print(round(f['intercept_ms'] + 8 * f['per_step_ms'], 4))" "$out/parity-budget50/cost_model.json")
train parity,0.5 parity-latency --config.budget.unit=latency_ms --config.budget.target="$target" \
  --config.budget.cost_model="$out/parity-budget50/cost_model.json" --config.budget.serving_batch=32
adaptive eval --workdir "$out/parity-latency" --latency-batch 32
adaptive report "$out/parity-latency" --markdown "$here/latency.md"

# The same on a network whose steps cost real time at batch 32 (MNIST-1D, residual blocks of
# width 256): calibrate, ask for the latency of 4 of its 8 blocks, train to it, measure.
# (configs/budget.py computes its FLOPs target for width 128: state this one in steps.)
train mnist1d,0.5 mnist1d-w256 --config.model.hidden=256 --config.train.steps=2000 \
  --config.budget.unit=steps --config.budget.target=4
adaptive calibrate --workdir "$out/mnist1d-w256" --batches 32
target=$(python3 -c "import json,sys; f=json.load(open(sys.argv[1]))['fits']['b32_k0']; \
print(round(f['intercept_ms'] + 4 * f['per_step_ms'], 4))" "$out/mnist1d-w256/cost_model.json")
train mnist1d,0.5 mnist1d-w256-latency --config.model.hidden=256 --config.train.steps=2000 \
  --config.budget.unit=latency_ms --config.budget.target="$target" \
  --config.budget.cost_model="$out/mnist1d-w256/cost_model.json" --config.budget.serving_batch=32
adaptive eval --workdir "$out/mnist1d-w256-latency" --latency-batch 32
adaptive report "$out/mnist1d-w256-latency" --markdown "$here/latency_mnist1d_w256.md"

# Experts under a budget: top-p routing (up to 4 of 8 experts a token) with the budget in FLOPs,
# against fixed top-k models with the same experts; then ACT + top-p experts together (SUT).
for pct in 50 75; do train "moe,0.$pct" "moe-budget$pct"; done
for k in 2 3; do
  train moe,0.5 "moe-static-k$k" --config.budget.target=None --config.moe.router=top_k --config.moe.k=$k \
    --config.moe.expert_hidden=64
done
train sut,0.5 sut-budget50
adaptive report "$out"/moe-budget{50,75} "$out"/moe-static-k{2,3} "$out/sut-budget50" --markdown "$here/experts.md"

# A latency SLA held by a per-request cap: calibrate the w256 network on real test batches of
# 1000 (medians and p99s), train to a mean of 3 blocks' median latency with every request capped
# at the p99 latency of 4 blocks, and measure on real batches.
adaptive calibrate --workdir "$out/mnist1d-w256" --batches 32,256,1000 --repeats 200
read -r mean_ms sla_ms < <(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
f, t = d['fits']['b1000_k0'], d['tail_fits']['b1000_k0']; \
print(round(f['intercept_ms'] + 3 * f['per_step_ms'], 4), round(t['intercept_ms'] + 4 * t['per_step_ms'], 4))" \
  "$out/mnist1d-w256/cost_model.json")
train mnist1d,0.5 mnist1d-w256-sla --config.model.hidden=256 --config.train.steps=2000 \
  --config.budget.unit=latency_ms --config.budget.target="$mean_ms" --config.budget.requests="$sla_ms" \
  --config.budget.cost_model="$out/mnist1d-w256/cost_model.json" --config.budget.serving_batch=1000
for i in 1 2 3; do  # three measurements: this machine's speed drifts by tens of percent
  adaptive eval --workdir "$out/mnist1d-w256-sla" --latency-batch 1000
  cp "$out/mnist1d-w256-sla/eval/test-step2000.json" "$out/mnist1d-w256-sla/eval/latency-$i.json"
done
python3 -c "import json,sys; json.dump([json.load(open(f)) for f in sys.argv[2:]], open(sys.argv[1], 'w'), indent=1)" \
  "$here/latency_sla.json" "$out"/mnist1d-w256-sla/eval/latency-{1,2,3}.json
