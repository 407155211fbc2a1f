"""A language-model run read once on the test split at the operating point it was trained for:
exits at `lm.exit_threshold`, MoD blocks routed by their causal predictors, every expert its
router gives, ACT halting by its rule (what the experiments of experiments/ on language models
score)."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from adaptive.compute.lm_flops import lm_flops
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.evaluation.lm_report import Knobs, lm_report
from adaptive.inference.restore import Run, load_run
from adaptive.training.metrics import read_jsonl


def test_point(workdir: Path, limit: int | None, folder: str) -> tuple[Run, dict]:
    """(the run, its lm_report point on the first `limit` test windows); plots go to
    WORKDIR/eval/`folder`."""
    run = load_run(workdir, language_model=True)
    knobs = Knobs(threshold=run.cfg.lm.exit_threshold if run.cfg.lm.exits else None)
    report, _ = lm_report(run, "test", run.workdir / "eval" / folder, limit=limit, points=[knobs])
    return run, report["points"][0]


def last_logged(workdir: Path, key: str):
    """The last value of `key` in WORKDIR/metrics.jsonl (None when it was never logged)."""
    rows = read_jsonl(Path(workdir) / "metrics.jsonl")
    return next((row[key] for row in reversed(rows) if key in row), None)


def training_flops_per_token(cfg) -> float:
    """A training step's forward FLOPs per token (top-k MoD blocks at their capacity)."""
    return lm_flops(cfg, cfg.data.window, VOCAB_SIZE, batch=cfg.train.batch_size, train=True).full()


def compare(workdirs: dict[str, Path], out: Path, limit: int | None, folder: str) -> list[dict]:
    """One row per named run, each read once on the test split: bits per byte, forward FLOPs per
    token, training FLOPs and parameters; rows after the first also hold their differences to
    it (`bpb_minus_dense`, `forward_flops_ratio`, `train_flops_ratio`: the first is the dense
    baseline). Written to `out` as a JSON list."""
    rows = []
    for model, workdir in workdirs.items():
        run, point = test_point(workdir, limit, folder)
        tokens = run.step * run.cfg.train.batch_size * run.cfg.data.window
        rows.append(
            {
                "model": model,
                "bits_per_byte": point["bits_per_byte"],
                "flops_per_token": point["flops_per_token"],  # a forward pass, as decoding runs it
                "train_flops": training_flops_per_token(run.cfg) * tokens,
                "train_steps": run.step,
                "params": int(sum(x.size for x in jax.tree.leaves(run.params))),
                "mod_share": point["mod_share"],
                "experts_per_token": point["experts_per_token"],
                "tokens": point["tokens"],
            }
        )
    base = rows[0]
    for row in rows[1:]:
        row["bpb_minus_dense"] = row["bits_per_byte"] - base["bits_per_byte"]
        row["forward_flops_ratio"] = row["flops_per_token"] / base["flops_per_token"]
        row["train_flops_ratio"] = row["train_flops"] / base["train_flops"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m adaptive.experiments.lm_scoring --json OUT [--limit W] NAME=RUN ...`: `compare`."""
    import argparse

    parser = argparse.ArgumentParser(description="language-model runs read once on the test split, side by side")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help="windows of the test split read (default: all)")
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR, the dense baseline first")
    args = parser.parse_args(argv)
    named = dict(item.split("=", 1) for item in args.runs)
    print_rows(compare({name: Path(path) for name, path in named.items()}, args.json, args.limit, "compare"))
    return 0


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        flops = f"FLOPs per token {row['flops_per_token']:,.0f}"
        print(f"{row['model']:>8}: bits per byte {row['bits_per_byte']:.4f}, {flops}, {row['params']:,} parameters")


if __name__ == "__main__":
    raise SystemExit(main())
