#!/usr/bin/env bash
# Serving under a latency SLA: train the adaptive model and the small fallback, export both,
# then `adaptive bench serve`: seven policies (full depth, the small model and a fixed budget, each
# queueing and with deadline shedding, and the controller; these artifacts have no operating
# points, so no point ladder), four arrival patterns, 3 runs each.
# Usage: experiments/serving/run.sh [--tiny] [parity|mnist1d] [OUT] [ROWS]. Thin: `adaptive train`, `export`,
# `bench serve`.
#   --tiny: tiny models (seconds of training), one run of 1 s of load per pattern, the JSON in OUT:
#   a check that the pipeline runs end to end, not a measurement (the claims are checked on the full run).
#   The files the README cites (serve_TASK.json, TASK_*.png, TASK_grouping.json) are written in OUT, never
#   over the committed ones here: copy them here by hand to replace those.
#   ROWS: also write one row per policy, pattern and run there (`seed` = the run, whose load schedules
#   are the same for every policy; its effective accuracy and SLA violation rate): what
#   `adaptive reproduce serving` judges its claims on, paired by run.
# The benchmark alone takes about 15 min per task on a 2-core machine (7 policies x 4 patterns x 3 runs
# of 6 s, about 4 min of it the base-rate probe, server start-ups and drains).
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
task=${1:-parity}
out=${2:-runs/serve}
rows=${3:-}
quiet=(--config.logging.wandb=disabled)

per_run_rows() {  # $1: bench serve's JSON (a row per policy and pattern) -> $rows (a row per run of each)
  if [ -z "$rows" ]; then return; fi
  python3 - "$1" "$rows" <<'EOF'
import json, sys
rows = [
    {"policy": r["policy"], "pattern": r["pattern"], "seed": run, "effective_accuracy": a, "sla_violation_rate": v}
    for r in json.load(open(sys.argv[1]))
    for run, (a, v) in enumerate(zip(r["effective_accuracy_runs"], r["sla_violation_rate_runs"], strict=True))
]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
EOF
}

if [ "$tiny" = true ]; then
  # The ACT RNN of the main job, tiny (cap 6), and a static one-step RNN of width 16 as the fallback.
  adaptive train --config configs/parity.py:tiny --workdir "$out/tiny-act" "${quiet[@]}"
  adaptive train --config configs/parity.py:tiny --workdir "$out/tiny-small" "${quiet[@]}" \
    --config.model.hidden=16 --config.halting.policy=none
  for m in tiny-act tiny-small; do adaptive export --workdir "$out/$m" --out "$out/$m.art" --force; done
  adaptive bench serve --tiny --artifact "$out/tiny-act.art" --small "$out/tiny-small.art" --sla-ms 50 \
    --max-batch 16 --fixed-budget 2 --repeats 1 --out "$out/bench-tiny" --json "$out/serve_tiny.json"
  per_run_rows "$out/serve_tiny.json"
  exit 0
fi

if [ "$task" = parity ]; then
  # A Sparse Universal Transformer (width 64, 16 tokens, 4 experts of width 2048, 2 a token)
  # halted by ACT up to 8 steps, trained with request caps of 2, 4 or 8 steps drawn per example
  # (30-50 min on the 2026-12-03 machine); the fallback is the main job's ACT RNN (width 128; ~30 s). (The README's unbatched
  # run used --config.moe.expert_hidden=512 and --max-batch 1.)
  adaptive train --config configs/sut.py --workdir "$out/sut2048" "${quiet[@]}" --config.moe.expert_hidden=2048 \
    --config.train.steps=2500 --config.train.eval_every=500 \
    --config.budget.requests=2,4,8 --config.budget.request_weights=1,1,2
  adaptive train --config configs/parity.py --workdir "$out/parity-rnn" "${quiet[@]}"
  primary=sut2048 small=parity-rnn budget=1 batch=16 json=serve_parity.json
else
  # A shared residual block of width 1024 applied up to 8 times under ACT, trained to a mean of 4
  # steps with request caps of 2, 4 or 8 drawn per example (so it answers at any budget). (Width
  # 2048, the choice on an earlier machine, held no rate within a 50 ms SLA on the 2026-12-02 one:
  # 31 ms p50 for lone requests at 5/s.)
  train() { adaptive train --config configs/mnist1d.py "${quiet[@]}" --workdir "$out/$1" "${@:2}"; }
  train primary1024 --config.model.kind=mlp --config.model.hidden=1024 --config.model.share_weights=true \
    --config.halting.policy=act --config.halting.max_steps=8 --config.halting.tau=0 --config.budget.target=4 \
    --config.budget.requests=2,4,8 --config.budget.request_weights=1,1,2 --config.train.steps=600 \
    --config.train.batch_size=64 --config.train.eval_batch_size=250 --config.train.eval_every=600
  train small --config.model.kind=mlp --config.model.hidden=128 --config.halting.policy=none \
    --config.model.depth=2 --config.train.steps=1500
  primary=primary1024 small=small budget=3 batch=16 json=serve_mnist1d.json
fi
adaptive export --workdir "$out/$primary" --out "$out/$primary.art" --force
adaptive export --workdir "$out/$small" --out "$out/$small.art" --force
adaptive bench serve --artifact "$out/$primary.art" --small "$out/$small.art" --sla-ms 50 --max-batch "$batch" \
  --duration 6 --repeats 3 --fixed-budget "$budget" --out "$out/bench-$task" --json "$out/$json"
for f in latency_cdf.png budget_over_time.png grouping.json; do cp "$out/bench-$task/$f" "$out/${task}_$f"; done
per_run_rows "$out/$json"
