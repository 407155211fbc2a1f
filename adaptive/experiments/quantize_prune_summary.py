"""The precision-and-pruning experiment's table over seeds (experiments/quantize_prune):

    python -m adaptive.experiments.quantize_prune_summary DIR --json summary.json --markdown summary.md

Reads DIR/qp-<model>-seed<S>.json (the rows `adaptive reproduce quantize_prune` wrote) and gives,
per model and operating point, the mean over seeds and its 95% t-interval of the test accuracy
(language model: bits per byte), its drop against the same seed's fp32 point, and the ratios of
FLOPs, weight bytes, memory and latency to fp32.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from adaptive.evaluation.intervals import mean_interval

COLUMNS = (
    "test_accuracy",
    "accuracy_drop",
    "test_bits_per_byte",
    "bits_per_byte_rise",
    "flops_ratio",
    "weight_bytes_ratio",
    "memory_mb_ratio",
    "ms_ratio",
)
FILE = re.compile(r"qp-(?P<model>[a-z0-9]+)-seed(?P<seed>\d+)\.json")


def summarize(folder: Path) -> dict:
    rows: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(folder.glob("qp-*-seed*.json")):
        match = FILE.fullmatch(path.name)
        if match is None:
            continue
        for row in json.loads(path.read_text()):
            rows.setdefault((match["model"], row["variant"]), []).append(row)
    if not rows:
        raise SystemExit(f"no qp-<model>-seed<S>.json files in {folder}")
    out = {}
    for (model, variant), runs in rows.items():
        entry = {"seeds": len(runs), "clips": sorted({r["clip"] for r in runs})}
        for column in COLUMNS:
            values = [r[column] for r in runs if r.get(column) is not None]
            if values:
                i = mean_interval(values)
                entry[column] = {"mean": round(i.mean, 4), "low": _round(i.low), "high": _round(i.high)}
        out.setdefault(model, {})[variant] = entry
    return out


def _round(value):
    return None if value is None else round(value, 4)


def markdown(summary: dict) -> str:
    lines = []
    for model, points in summary.items():
        lm = any("test_bits_per_byte" in p for p in points.values())
        quality = ("test_bits_per_byte", "bits_per_byte_rise") if lm else ("test_accuracy", "accuracy_drop")
        head = [*quality, "flops_ratio", "weight_bytes_ratio", "memory_mb_ratio", "ms_ratio"]
        lines += [f"### {model}", "", "| point | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for variant, entry in points.items():
            cells = [_cell(entry.get(column)) for column in head]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if value["low"] is None:
        return f"{value['mean']:.4f}"
    return f"{value['mean']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptive.experiments.quantize_prune_summary")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    summary = summarize(args.folder)
    args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
