"""Argument types for flags whose values the parser can check before any work starts: a bad
value is argparse's one-line usage error (exit 2), not a traceback after minutes of timing."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

# the formats matplotlib writes that a person opens as a picture
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {least}; got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {least}; got {value}")
    return value


def _finite_number(text: str, *, zero_allowed: bool) -> float:
    bound = ">= 0" if zero_allowed else "> 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}; got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}; got {text}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """A whole number >= 0 (a count of steps where none is a choice)."""
    return _whole_number(text, 0)


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of whole numbers >= 1, at least one, each once (batch sizes, depths:
    one given twice would be timed twice and listed as two rows)."""
    entries = [p.strip() for p in text.split(",")]
    parts = [p for p in entries if p]
    wanted = "must be comma-separated whole numbers >= 1"
    message = f"{wanted}; got {text!r}"
    if not parts:
        raise argparse.ArgumentTypeError(message)
    if len(parts) < len(entries):  # refused, not dropped: a stray comma may stand where a value was meant
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry (a stray comma?); {wanted}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(message)
    if len(set(values)) < len(values):
        raise argparse.ArgumentTypeError(f"lists a value twice; give each once: {text!r}")
    return values


MOST_BATCH = 65536  # rows: a batch past this is a typo, and would compile and fill memory first


def batch_sizes(text: str) -> list[int]:
    """`positive_ints`, each at most `MOST_BATCH`: batch sizes to compile and time."""
    values = positive_ints(text)
    if max(values) > MOST_BATCH:
        raise argparse.ArgumentTypeError(f"a batch of at most {MOST_BATCH} rows; got {max(values)}")
    return values


def device_ids(text: str) -> list[str]:
    """Accelerator ids, e.g. 0,1,2,3: whole numbers >= 0, each once (a device given twice would
    be shared by two points that each think it is theirs)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated device ids (whole numbers >= 0); got {text!r}")
    if len(set(map(int, parts))) < len(parts):
        raise argparse.ArgumentTypeError(f"lists a device twice; give each once: {text!r}")
    return [str(int(p)) for p in parts]


def positive_float(text: str) -> float:
    """A finite number > 0 (a rate, a duration, an SLA, a capacity factor)."""
    return _finite_number(text, zero_allowed=False)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (a price, a power draw)."""
    return _finite_number(text, zero_allowed=True)


def _in_a_folder(text: str) -> Path:
    path = Path(text)
    if not path.name or path.is_dir():
        raise argparse.ArgumentTypeError(f"must name a file, not a folder; got {text!r}")
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"its folder {str(path.parent)!r} does not exist")
    return path


def image_file(text: str) -> str:
    """A picture to write: .png, .pdf or .svg, in a folder that exists."""
    path = _in_a_folder(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"must end in {', '.join(IMAGE_SUFFIXES)}; got {text!r}")
    return text


def output_file(text: str) -> str:
    """A file to write, in a folder that exists."""
    _in_a_folder(text)
    return text


def json_output(text: str) -> str:
    """A benchmark's --json: a file, not a folder, under no file; folders it lacks are made as it
    writes (beside `--out DIR`, which the benchmark itself makes). Checked before minutes of timing."""
    path = Path(text)
    if not path.name or path.is_dir():
        raise argparse.ArgumentTypeError(f"must name a file, not a folder; got {text!r}")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{str(parent)!r} is a file, so {text!r} cannot be written")
    return text


def comma_entries(flag: str, text: str) -> list[str]:
    """A comma-separated flag's values, stripped; an empty one (`fp32,int8,`) is refused, not
    dropped: a stray comma may stand where a value was meant."""
    from adaptive.config import ConfigError

    entries = [part.strip() for part in text.split(",")] if text.strip() else []
    if "" in entries:
        raise ConfigError(f"{flag} {text!r} has an empty entry (a stray comma?); give comma-separated values")
    return entries
