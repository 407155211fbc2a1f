"""Where a benchmark's rows go besides its printed table: a JSON file (`--json OUT`)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def write_json(path: str | Path | None, rows: list[dict]) -> None:
    """Rows as strict JSON: a figure with no finite value (the cost per correct answer when none
    was correct) is written as null, since NaN and Infinity are not JSON and strict readers refuse them."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_finite_or_null(rows), indent=2, allow_nan=False) + "\n")
        print(f"wrote {path}")


def _finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value
