"""Where a benchmark's rows go besides its printed table: a JSON file (`--json OUT`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | Path | None, rows: list[dict]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {path}")
