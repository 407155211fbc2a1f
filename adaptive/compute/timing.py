"""Timing side by side: interleaved rounds, medians after warm-up, results blocked on."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_side_by_side(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 5) -> dict[str, float]:
    """Median milliseconds of each zero-argument function, measured in interleaved rounds."""
    samples = samples_side_by_side(fns, repeats=repeats, warmup=warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def samples_side_by_side(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 5
) -> dict[str, list[float]]:
    """Every timing (ms) of each zero-argument function, measured in interleaved rounds.

    Interleaving (a, b, a, b, ...) exposes every candidate to the same machine state (other
    load, frequency, caches) so their ratio is fair even when absolute times drift.
    """
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples
