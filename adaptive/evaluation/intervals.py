"""95% intervals over seeds: how `adaptive reproduce` judges a claim and `adaptive report`
summarises runs that differ only by their seed.

A seed is one replicate: it gives one number (say a run's test accuracy). The interval of the
mean over n seeds is Student's t-interval, `mean +- t(0.975, n - 1) * sd / sqrt(n)` with the
n - 1 standard deviation. Not a bootstrap: over 3-5 seeds a bootstrap has a handful of distinct
resamples and ignores that sd is itself estimated, so it is too narrow exactly when seeds are few.

Two configurations run on the same seeds are compared *paired*: the t-interval of the mean
per-seed difference. A seed fixes the data order and the initialisation of both, so their noise
is shared and pairing removes it. Configurations on different seed sets fall back to Welch's
interval (unequal variances, Welch-Satterthwaite degrees of freedom).

With a single value there is nothing to spread over: the interval is None (printed as
'n/a (1 seed)') and only the point estimate exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its two-sided interval (low, high: None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    rule: str  # how it was computed, for printing: "t over 3 seeds", "paired t over 3 seeds", ...

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def text(self, digits: int = 4) -> str:
        """`0.9857 [0.9403, 1.031] (t over 3 seeds)` or `0.5098, interval: n/a (1 seed)`."""
        if self.low is None:
            return f"{self.mean:.{digits}g}, interval: n/a ({self.n} seed{'s' if self.n != 1 else ''})"
        return f"{self.mean:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}] ({self.rule})"


def _t_quantile(df: float, level: float) -> float:
    from scipy.stats import t  # scipy comes with jax; imported here to keep imports of this module light

    return float(t.ppf(0.5 + level / 2, df))


def _values(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"no values for the {what}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"non-finite value among {out} for the {what}")
    return out


def _variance(x: list[float]) -> float:
    mean = sum(x) / len(x)
    return sum((v - mean) ** 2 for v in x) / (len(x) - 1)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of `values` (one per seed) and its Student t-interval."""
    x = _values(values, "mean")
    n, mean = len(x), sum(x) / len(x)
    if n < 2:
        return Interval(mean, None, None, n, "point estimate")
    half = _t_quantile(n - 1, level) * math.sqrt(_variance(x) / n)
    return Interval(mean, mean - half, mean + half, n, f"t over {n} seeds")


def paired_difference(a: Mapping, b: Mapping, level: float = LEVEL) -> Interval:
    """The mean of a[seed] - b[seed] over the seeds both have, with its t-interval."""
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds:
        raise ValueError("no seed in common for a paired difference")
    iv = mean_interval([a[s] - b[s] for s in seeds], level)
    return Interval(iv.mean, iv.low, iv.high, iv.n, "paired " + iv.rule if iv.low is not None else iv.rule)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) with Welch's interval (None when either side has fewer than 2 values)."""
    x, y = _values(a, "difference"), _values(b, "difference")
    diff = sum(x) / len(x) - sum(y) / len(y)
    n = min(len(x), len(y))
    if n < 2:
        return Interval(diff, None, None, n, "point estimate")
    sx, sy = _variance(x) / len(x), _variance(y) / len(y)  # squared standard errors
    if sx + sy == 0:
        return Interval(diff, diff, diff, n, f"Welch t over {len(x)} and {len(y)} seeds")
    df = (sx + sy) ** 2 / (sx**2 / (len(x) - 1) + sy**2 / (len(y) - 1))
    half = _t_quantile(df, level) * math.sqrt(sx + sy)
    return Interval(diff, diff - half, diff + half, n, f"Welch t over {len(x)} and {len(y)} seeds")


def difference(a: Mapping, b: Mapping, level: float = LEVEL) -> Interval:
    """a - b over seeds (seed -> value): paired when both cover the same seeds, else Welch."""
    if set(a) == set(b):
        return paired_difference(a, b, level)
    return welch_difference(list(a.values()), list(b.values()), level)
