"""Collect the priority-rule runs of priority_rules.sh into priority_rules.json.

Per run: validation accuracy (the final evaluation logged in metrics.jsonl, evaluation capacity
factor 2.0), test accuracy (the `adaptive eval --split test` JSON of the newest step) and the
training drop fraction (`moe/drop_fraction` of the last logged training window). Per capacity
factor: each rule's mean with its t-interval over seeds, and top1 - own paired by seed with its
95% t-interval (adaptive.evaluation.intervals).

Usage: python experiments/moe_vs_dense/priority_rules.py [RUNS_DIR] [OUT_JSON]
"""

import json
import pathlib
import sys

from adaptive.evaluation.intervals import mean_interval, paired_difference

CAPACITY_FACTORS = ("0.5", "0.75", "1.0", "1.25")
RULES = ("top1", "own")
SEEDS = (0, 1, 2)
METRICS = ("validation_accuracy", "test_accuracy", "train_drop_fraction")


def read_run(workdir: pathlib.Path) -> dict:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("split") == "eval" and r.get("eval/split", "validation") == "validation"]
    trains = [r for r in records if r.get("split") == "train" and "moe/drop_fraction" in r]
    tests = sorted(workdir.glob("eval/test-step*.json"), key=lambda p: int(p.stem.split("step")[1]))
    test = json.loads(tests[-1].read_text())
    assert test["split"] == "test"
    return {
        "step": evals[-1]["step"],
        "validation_accuracy": evals[-1]["eval/accuracy"],
        "test_accuracy": test["eval/accuracy"],
        "train_drop_fraction": trains[-1]["moe/drop_fraction"],
    }


def interval_dict(iv) -> dict:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n, "rule": iv.rule}


def main(runs: pathlib.Path, out: pathlib.Path) -> None:
    rows = []
    for cf in CAPACITY_FACTORS:
        for rule in RULES:
            for seed in SEEDS:
                name = f"moe-cf{cf}-{rule}-s{seed}"
                rows.append({"run": name, "capacity_factor": float(cf), "priority": rule, "seed": seed,
                             **read_run(runs / name)})
    per_cf = []
    for cf in CAPACITY_FACTORS:
        entry = {"capacity_factor": float(cf)}
        by_rule = {rule: {r["seed"]: r for r in rows if r["capacity_factor"] == float(cf) and r["priority"] == rule}
                   for rule in RULES}
        for metric in METRICS:
            values = {rule: {s: r[metric] for s, r in by_rule[rule].items()} for rule in RULES}
            entry[metric] = {
                **{rule: interval_dict(mean_interval(list(values[rule].values()))) for rule in RULES},
                "top1_minus_own": interval_dict(paired_difference(values["top1"], values["own"])),
            }
        per_cf.append(entry)
    result = {
        "what": "moe.priority top1 vs own on configs/moe.py (MNIST-1D vectors, 8 experts, top-2, 4000 steps), "
        "training capacity factor swept, evaluation capacity factor 2.0; validation accuracy from the final "
        "evaluation in metrics.jsonl, test accuracy from adaptive eval --split test, training drop fraction "
        "from the last logged training window; paired by seed, 95% t-intervals",
        "commands": "experiments/moe_vs_dense/priority_rules.sh",
        "runs": rows,
        "paired": per_cf,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    for entry in per_cf:
        cells = []
        for metric in METRICS:
            d = entry[metric]
            gap = d["top1_minus_own"]
            cells.append(
                f"{d['top1']['mean']:.4f} / {d['own']['mean']:.4f}  "
                f"{gap['mean']:+.4f} [{gap['low']:+.4f}, {gap['high']:+.4f}]"
            )
        print(entry["capacity_factor"], " | ".join(cells))
    print(f"wrote {out}")


if __name__ == "__main__":
    runs = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "runs/priority_rules")
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else pathlib.Path(__file__).with_name("priority_rules.json"))
    main(runs, out)
