"""Where a benchmark's rows go besides its printed table (a JSON file, `--json OUT`), and the checks its
numbers share: an interval over ratios that stays above 0, a warning where timings are noise."""

from __future__ import annotations

import json
import math
import sys
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


# A deeper model timed below this share of a shallower one's time: not a small wobble but noise
SLOWER_AT_LEAST = 0.9
MIN_ROUNDS_FOR_INTERVAL = 3  # a t-interval over 2 values has t(0.975, 1) = 12.7: no interval worth printing


def ratio_interval(ratios: list[float]) -> tuple[float | None, float | None]:
    """The 95% t-interval of the geometric mean of `ratios` (each a time over a time, so > 0),
    computed on their logarithms and mapped back: it never reaches 0 or below, as an interval
    over the ratios themselves can when they scatter. (None, None) with fewer than
    MIN_ROUNDS_FOR_INTERVAL values."""
    from adaptive.evaluation.intervals import mean_interval

    if len(ratios) < MIN_ROUNDS_FOR_INTERVAL or min(ratios) <= 0:
        return None, None
    interval = mean_interval([math.log(r) for r in ratios])
    return math.exp(interval.low), math.exp(interval.high)


def warn_deeper_faster(times: list[tuple[float, float]], said, more: str = "--repeats") -> None:
    """A noise warning for each deeper static model timed clearly faster than the next shallower
    one: `times` (depth, ms), in any order, `said(d1, ms1, d2, ms2)` the line for depth d2 timed
    below d1's. A time that is not finite (a variant that did not run) is skipped."""
    timed = sorted((d, ms) for d, ms in times if math.isfinite(ms))
    for (d1, ms1), (d2, ms2) in zip(timed, timed[1:], strict=False):
        if d2 > d1 and ms2 < SLOWER_AT_LEAST * ms1:
            noise_warning(said(d1, ms1, d2, ms2), more)


def noise_warning(what: str, more: str = "--repeats") -> None:
    """One line on stderr: a measurement that cannot be right (a deeper model faster than a
    shallower one, a fraction outside [0, 1]) means the timings are noise at these settings."""
    print(f"warning: {what}: timings are noise at these settings (use more {more})", file=sys.stderr, flush=True)
