"""What the serving controller (adaptive.serving.controller) is told of each request of a batch
about to run, and what it decides for it."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred")
MODES = ("adaptive", "static", "shed")


@dataclass(frozen=True)
class Decision:
    status: str  # ok | degraded | fallback | rejected | deferred
    model: str | None  # "primary", a fallback's name, or None
    steps: int
    experts: int | None = None  # experts per token on a MoE primary (None: its trained k)
    reason: str = field(default="", compare=False)  # a rejection's, where it is not the load


@dataclass(frozen=True)
class Request:
    """What the controller knows of one request of a batch about to run."""

    steps: int  # the step budget it asked for
    waited_ms: float  # since it arrived
    priority: int = 0  # 0 first; under load, higher numbers degrade first
    # The most steps a fallback may take within the request's own budget, priced in the
    # request's unit through that fallback's compute table (None: no budget, its cap; 0: the
    # fallback cannot answer within the budget, so it is no rung for this request); one value
    # for every fallback, or a tuple with one per fallback, in the controller's order.
    fallback_steps: int | None | tuple[int | None, ...] = None
    # On a MoE primary, the step budget at each smaller expert budget, in the controller's order
    # (a FLOPs budget buys more steps at fewer experts; 0: none fits); None: `steps` at every one.
    expert_steps: tuple[int, ...] | None = None


REJECTED = Decision("rejected", None, 0)
