"""The rungs below the primary model in the degradation ladder (adaptive.serving.controller): a
smaller model, or cheaper operating points of one (lower precision, pruned), and which of them
are worth planning a batch against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Fallback:
    """A rung below the primary: a smaller model or a cheaper operating point of one."""

    name: str = "fallback"  # the server's name for its engine, and a decision's `model`
    cap: int = 1  # its step cap
    # Validation accuracy on the primary's split: at its cap, or {steps: accuracy} (None: not
    # comparable; it ranks below the primary's least accurate point, in the order given).
    accuracy: float | dict[int, float] | None = None


def fallback_score(rung: Fallback, steps: int) -> float | None:
    """The validation accuracy of `rung` at `steps` (None: not comparable or not scored)."""
    if isinstance(rung.accuracy, dict):
        return rung.accuracy.get(steps)
    return rung.accuracy if steps == rung.cap else None


def worth_planning(
    rungs: Sequence[Fallback],
    times: Callable[[Fallback], tuple[float, ...]],
    steps_of: Callable[[Fallback], list[int]],
) -> list[Fallback]:
    """The rungs no other beats: one is left out when another is at least as accurate at every
    step budget it is scored at (ties, and two unscored rungs: the earlier one wins), as quick
    at every batch size `times` gives (measured; the caller gives the smallest and the largest)
    and gives every request of the batch the same steps (`steps_of`: each request's step budget
    on that rung). The order is kept; at least one rung remains (the relation has no cycle)."""

    def beats(a: Fallback, earlier: bool, b: Fallback) -> bool:
        if b.accuracy is None or a.accuracy is None:
            as_good = a.accuracy is None and b.accuracy is None and earlier
        else:
            scored = b.accuracy if isinstance(b.accuracy, dict) else {b.cap: b.accuracy}
            pairs = [(fallback_score(a, s), v) for s, v in scored.items()]
            as_good = all(x is not None and x >= v for x, v in pairs) and (earlier or any(x > v for x, v in pairs))
        quick = all(x <= y for x, y in zip(times(a), times(b), strict=True))
        return as_good and quick and steps_of(a) == steps_of(b)

    return [b for i, b in enumerate(rungs) if not any(beats(a, j < i, b) for j, a in enumerate(rungs) if a is not b)]
