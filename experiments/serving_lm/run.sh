#!/usr/bin/env bash
# Serving generation under TTFT and TPOT SLAs: train the exit model and the small fallback,
# certify the exit threshold, export both with 8 decode slots, then `adaptive bench serve-lm`:
# five policies (full depth, with shedding, the fixed certified threshold, the controller alone and
# with the fallback), three arrival patterns, 3 runs each. The README's commands, in one script.
# Usage: experiments/serving_lm/run.sh [--tiny] [OUT] [ROWS]. Thin: `adaptive train`,
# `calibrate-exits`, `export`, `bench serve-lm`.
#   --tiny: configs/lm.py:tiny models (seconds of training), one run of 1 s of load per pattern,
#   the JSON in OUT: a check that the pipeline runs end to end, not a measurement.
#   The files the README cites (results.json and the bench's plots, in OUT/bench) are written in OUT,
#   never over the committed ones here: copy them here by hand to replace those.
#   ROWS: also write one row per policy, pattern and run there (`seed` = the run, whose load
#   schedules are the same for every policy; its violation rate, p99 TPOT and agreement-weighted
#   goodput; the fixed policy as `fixed threshold` with its threshold beside): what `adaptive reproduce serving_lm` judges its claims on, paired by run.
# Full: about 6 min of training and 8 min of benchmark on a 2-core machine.
set -euo pipefail
tiny=false
if [ "${1:-}" = --tiny ]; then tiny=true; shift; fi
out=${1:-runs/serve-lm}
rows=${2:-}
quiet=(--config.logging.wandb=disabled)

per_run_rows() {  # $1: bench serve-lm's JSON (a row per policy and pattern) -> $rows (a row per run of each)
  if [ -z "$rows" ]; then return; fi
  python3 - "$1" "$rows" <<'PY'
import json, sys
metrics = ("violation_rate", "tpot_p99_ms", "agreement_weighted_goodput")

def policy(name):  # the fixed policy is named by its certified threshold, which differs by run
    if name.startswith("fixed threshold "):
        return {"policy": "fixed threshold", "threshold": float(name.rsplit(" ", 1)[1])}
    return {"policy": name}

rows = [
    {**policy(r["policy"]), "pattern": r["pattern"], "seed": run, **dict(zip(metrics, values, strict=True))}
    for r in json.load(open(sys.argv[1]))
    for run, values in enumerate(zip(*(r[f"{m}_runs"] for m in metrics), strict=True))
]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
PY
}

if [ "$tiny" = true ]; then
  adaptive train --config configs/lm.py:tiny --workdir "$out/lm-exits" "${quiet[@]}" --config.lm.exits=true
  adaptive calibrate-exits --workdir "$out/lm-exits" --delta 0.2 --epsilon 0.2 --windows 32
  adaptive train --config configs/lm.py:tiny --workdir "$out/lm-small" "${quiet[@]}" --config.model.depth=1
  for r in lm-exits lm-small; do
    adaptive export --workdir "$out/$r" --out "$out/art/$r" --prompt-capacity 16 --new-tokens 8 --slots 4 --force
  done
  adaptive bench serve-lm --tiny --artifact "$out/art/lm-exits" --small "$out/art/lm-small" \
    --out "$out/bench-tiny" --json "$out/serve_lm_tiny.json"
  per_run_rows "$out/serve_lm_tiny.json"
  exit 0
fi

adaptive train --config configs/lm.py --workdir "$out/lm-exits" "${quiet[@]}" --config.lm.exits=true \
  --config.data.window=128 --config.train.batch_size=16 --config.train.steps=1000
adaptive calibrate-exits --workdir "$out/lm-exits" --delta 0.1 --epsilon 0.1 --windows 64
adaptive train --config configs/lm.py --workdir "$out/lm-small" "${quiet[@]}" --config.model.depth=1 \
  --config.model.hidden=64 --config.data.window=128 --config.train.steps=600 \
  --config.train.batch_size=16 --config.train.eval_every=600
for r in lm-exits lm-small; do
  adaptive export --workdir "$out/$r" --out "$out/art/$r" --prompt-capacity 48 --new-tokens 32 --slots 8 --force
done
adaptive bench serve-lm --artifact "$out/art/lm-exits" --small "$out/art/lm-small" \
  --ttft-ms 500 --tpot-ms 25 --duration 12 --repeats 3 --out "$out/bench" --json "$out/results.json"
per_run_rows "$out/results.json"
