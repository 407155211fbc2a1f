"""summary.json of lm_budget: per mechanism, the mean over seeds and its 95% t-interval of the test
ratio to the target, validation's and training's ratios, bits per byte and blocks per token.

    python experiments/lm_budget/summarize.py runs/reproduce/lm_budget experiments/lm_budget/summary.json

Reads FOLDER/budget-MECHANISM-seedS.json (the rows `adaptive reproduce lm_budget` writes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adaptive.evaluation.intervals import mean_interval

MECHANISMS = ("exits", "mod", "topp", "act")
# the mechanism's own column, listed per seed
EXTRA = {"mod": "mod_share", "topp": "experts_per_token"}


def summarize(folder: Path) -> dict:
    out = {}
    for mechanism in MECHANISMS:
        rows = [json.loads(p.read_text()) for p in sorted(folder.glob(f"budget-{mechanism}-seed*.json"))]
        if not rows:
            continue
        target = rows[0]["target"]
        columns = {
            "ratio": [r["ratio"] for r in rows],
            "validation_ratio": [r["validation_flops_per_token"] / target for r in rows],
            "train_ratio": [r["train_realized"] / target for r in rows],
            "bits_per_byte": [r["bits_per_byte"] for r in rows],
            "blocks_mean": [r["blocks_mean"] for r in rows],
        }
        entry = {"target": target, "steps": sorted({r["step"] for r in rows})}
        for name, values in columns.items():
            iv = mean_interval(values)
            entry[name] = {
                "mean": round(iv.mean, 4),
                "low": None if iv.low is None else round(iv.low, 4),
                "high": None if iv.high is None else round(iv.high, 4),
                "seeds": [round(v, 4) for v in values],
            }
        if mechanism in EXTRA:
            entry[EXTRA[mechanism]] = [round(r[EXTRA[mechanism]], 4) for r in rows]
        out[mechanism] = entry
    return out


if __name__ == "__main__":
    folder, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(json.dumps(summarize(folder), indent=2) + "\n")
    print(f"wrote {target}")
