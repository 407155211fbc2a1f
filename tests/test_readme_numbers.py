"""Every number in an experiment README's results tables comes from that experiment's committed files.

DESIGN.md: "Every number in a README names the committed file it comes from." This test holds the
tables to it, by text alone (no run, no import of the package):

- Tables: every markdown table of `experiments/*/README.md` outside code fences (a table is a run
  of lines starting with `|` whose second line is the `|---|` separator). The header row is not
  checked (its numbers name columns); every body cell is, the first column included.
- Numbers in a cell: `0.986`, `**0.986**`, `13.78`, `4.1 -> 12.9` (two), `0.965..0.997` (two),
  `167,654`, `-3.1%`, `+3.4%`, `1.06x`, `2.113 (static at depth 10)` (two). A dash between two
  numbers is not a sign (`0.614-0.636` is two positives). Not numbers: anything inside a code
  span (`` `moe,0.75` ``, `` `f = 1024` ``: configuration, flags, file names) and digits that are
  part of a name (`top-2`, `k2`, `w256`, `act-tau3e-3`, `256-unit`).
- Committed files: every `*.md` (but README.md), `*.json` and `*.csv` in the experiment's folder
  and below it; their numbers are every numeric token of their text (`1.02394`, `4.71494e+06`,
  `cf=1.25`), also read without a sign (a hyphen in a name is not a minus).
- A match allows the README's rounding: a value v written with d decimals matches a file value f
  when |f - v| <= half a unit of its last digit (so 0.9885 gives 0.989 or 0.988, 1289.5 gives
  1290; integers such as steps, seeds and counts match exactly or as the rounding of f). A value
  written with `%` also matches a fraction (f x 100: `5.6%` is 0.0558); in a column whose header
  says `MFLOPs`, f / 1e6 matches (`68.3` is 68321538 FLOPs).
- Exceptions are listed in EXCEPTIONS below, each with its reason; keep them few.

A failure names the README, the value and the table row, so a wrong or untraceable number is
fixed in the README (or its results file committed), never by widening the rules.
"""

import math
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.parent for p in (ROOT / "experiments").glob("*/README.md"))

# (experiment folder, a substring of the table row, the value as written, why it is not checked).
EXCEPTIONS: list[tuple[str, str, str, str]] = []

_CELL_NUMBER = re.compile(r"(?P<sign>[-+])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<suffix>%|x\b)?")
_FILE_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _cell_values(cell: str) -> list[tuple[str, float, int, str]]:
    """(as written, value, decimals, suffix) of each number in a table cell."""
    cell = re.sub(r"`[^`]*`", " ", cell.replace("**", "")).strip()  # code spans are configuration
    out = []
    for m in _CELL_NUMBER.finditer(cell):
        before = cell[m.start() - 1] if m.start() > 0 else " "
        after = cell[m.end() : m.end() + 2]
        # Part of a name (`k2`, `w256`, `top-2`, `act-tau3e-3`, `256-unit`), not a number.
        if before.isalpha() or before == "_" or (not m.group("sign") and before.isdigit()):
            continue
        if after[:1].isalpha() or (after[:1] == "-" and after[1:2].isalpha()):
            continue
        sign = m.group("sign") or ""
        if sign and before.isdigit():
            sign = ""  # `0.614-0.636`: a dash between two numbers
        num = m.group("num")
        value = float(num.replace(",", ""))
        if sign == "-":
            value = -value
        out.append((f"{sign}{num}{m.group('suffix') or ''}", value, _decimals(num), m.group("suffix") or ""))
    return out


def _tables(text: str):
    """Yield (header cells, [(row text, cells)]) for every table outside code fences."""
    lines = text.splitlines()
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            in_fence = not in_fence
            i += 1
            continue
        is_table = (
            not in_fence
            and line.startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*", lines[i + 1].strip())
        )
        if not is_table:
            i += 1
            continue
        header = _split_row(line)
        rows = []
        i += 2
        while i < len(lines) and lines[i].strip().startswith("|"):
            rows.append((lines[i].strip(), _split_row(lines[i].strip())))
            i += 1
        yield header, rows


def _split_row(line: str) -> list[str]:
    line = line.strip().strip("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _file_values(folder: pathlib.Path) -> list[float]:
    values = set()
    for path in sorted(folder.rglob("*")):
        if path.suffix not in (".md", ".json", ".csv") or path.name == "README.md":
            continue
        for token in _FILE_NUMBER.findall(path.read_text()):
            f = float(token)
            if math.isfinite(f):
                values.add(f)
                values.add(abs(f))
    return sorted(values)


def _matches(value: float, decimals: int, suffix: str, header: str, files: list[float]) -> bool:
    tolerance = 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12
    scales = [1.0]
    if suffix == "%":
        scales.append(100.0)
    if "MFLOPs" in header:
        scales.append(1e-6)
    return any(abs(f * s - value) <= tolerance for f in files for s in scales)


def _excepted(folder: str, row: str, written: str) -> bool:
    return any(folder == e[0] and e[1] in row and e[2] == written for e in EXCEPTIONS)


def _untraced(folder: pathlib.Path) -> list[str]:
    files = _file_values(folder)
    readme = folder / "README.md"
    missing = []
    for header, rows in _tables(readme.read_text()):
        for row_text, cells in rows:
            for column, cell in enumerate(cells):
                name = header[column] if column < len(header) else ""
                for written, value, decimals, suffix in _cell_values(cell):
                    if _excepted(folder.name, row_text, written):
                        continue
                    if not _matches(value, decimals, suffix, name, files):
                        missing.append(
                            f"{readme.relative_to(ROOT)}: {written} (column {name!r}) is in no committed "
                            f"results file of {folder.relative_to(ROOT)}/, row: {row_text}"
                        )
    return missing


def test_experiments_found():
    names = {p.name for p in EXPERIMENTS}
    assert {"act_parity", "budget_targeting", "moe_vs_dense", "pondernet_parity", "serving"} <= names


@pytest.mark.parametrize("folder", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_readme_table_numbers_are_in_committed_files(folder):
    assert list(_tables((folder / "README.md").read_text())), f"{folder.name}: no results table found"
    missing = _untraced(folder)
    assert not missing, "\n".join(missing)


def test_exceptions_are_used():
    """An exception that no longer matches a README row is stale: remove it."""
    for folder_name, row_part, written, _reason in EXCEPTIONS:
        text = (ROOT / "experiments" / folder_name / "README.md").read_text()
        hits = [
            row
            for _h, rows in _tables(text)
            for row, cells in rows
            if row_part in row and any(w == written for c in cells for w, *_ in _cell_values(c))
        ]
        assert hits, f"stale exception: {folder_name} {row_part!r} {written!r}"


def test_parser_reads_the_forms_used():
    values = [
        w
        for c in ["**0.986**", "4.1 -> 12.9", "0.965..0.997", "167,654", "-3.1%", "+3.4%", "1.06x"]
        for w, *_ in _cell_values(c)
    ]
    assert values == ["0.986", "4.1", "12.9", "0.965", "0.997", "167,654", "-3.1%", "+3.4%", "1.06x"]
    assert [v for _w, v, *_ in _cell_values("0.614-0.636")] == [0.614, 0.636]
    assert [v for _w, v, *_ in _cell_values("top-2 k2 w256 act-tau3e-3 256-unit `moe,0.75` 8x")] == [8.0]
    assert _matches(0.989, 3, "", "", [0.9885])
    assert _matches(5.6, 1, "%", "", [0.05584])
    assert _matches(68.3, 1, "", "MFLOPs per correct", [68321538.0])
    assert not _matches(0.99, 2, "", "", [0.98])
    tables = list(_tables("```\n| a |\n|---|\n| 1 |\n```\n| a | b |\n|---|---|\n| 1 | 2 |\n"))
    assert len(tables) == 1 and tables[0][1][0][1] == ["1", "2"]
