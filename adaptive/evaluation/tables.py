"""Plain tables for the console and for markdown reports."""

from __future__ import annotations


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        if 0 < abs(value) < 10 ** (1 - digits):  # 3e-4 at 3 decimals is 0.000: significant digits instead
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A fixed-width table of `rows` (dicts) in the given column order; missing cells are blank."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c), 4) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
