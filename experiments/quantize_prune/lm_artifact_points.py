"""The operating points of a language model's artifact as a table: what `adaptive export
--precision ... --prune ...` measured and wrote into its meta.json, with ratios to (fp32, 0).

    python experiments/quantize_prune/lm_artifact_points.py runs/art/qp-lm2 [runs/art/qp-lm] \
        --json experiments/quantize_prune/lm_artifact_points.json

Each further artifact (the same run exported again) adds its per-token latency as a second
measurement, so the table shows how far the side-by-side timing moves between exports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adaptive.inference.artifact_meta import parse_meta


def rows(artifact: str) -> list[dict]:
    meta = parse_meta(Path(artifact))  # read as written (an earlier export's points had no slot functions)
    points = meta["operating_points"]
    base = next(p for p in points if (p["precision"], p["prune"]) == ("fp32", 0))
    out = []
    for p in points:
        out.append(
            {
                "point": f"{p['precision']}-p{round(p['prune'] * 100)}",
                "validation_bits_per_byte": p["bits_per_byte"],
                "validation_accuracy": p["accuracy"],
                "flops_per_token": p["flops"],
                "flops_ratio": round(p["flops"] / base["flops"], 4),
                "weight_bytes": p["weight_bytes"],
                "weight_bytes_ratio": round(p["weight_bytes"] / base["weight_bytes"], 4),
                "memory": p["memory"],
                "memory_ratio": round(p["memory"]["total_mb"] / base["memory"]["total_mb"], 4),
                "ms_per_token": p["latency_ms"]["per_token"],
                "ms_ratio": round(p["latency_ms"]["per_token"] / base["latency_ms"]["per_token"], 4),
                "latency": p["latency_ms"],
                "blob_bytes": p.get("bytes"),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    table = rows(args.artifacts[0])
    for again in args.artifacts[1:]:
        for row, other in zip(table, rows(again), strict=True):
            row.setdefault("ms_ratio_other_exports", []).append(other["ms_ratio"])
            row.setdefault("ms_per_token_other_exports", []).append(other["ms_per_token"])
    Path(args.json).write_text(json.dumps({"artifacts": args.artifacts, "points": table}, indent=1) + "\n")
    columns = ("point", "validation bits/byte", "FLOPs/token ratio", "weight bytes ratio", "memory MB (ratio)")
    print("| " + " | ".join((*columns, "ms/token (ratio)")) + " |")
    print("|---|---|---|---|---|---|")
    for r in table:
        again = "".join(f", {x}" for x in r.get("ms_ratio_other_exports", []))
        print(
            f"| {r['point']} | {r['validation_bits_per_byte']} | {r['flops_ratio']} | {r['weight_bytes_ratio']} | "
            f"{r['memory']['total_mb']} ({r['memory_ratio']}) | {r['ms_per_token']} ({r['ms_ratio']}{again}) |"
        )


if __name__ == "__main__":
    main()
