"""The 400 a classifier server gives a budget that no model it serves can keep, whatever the load.

A 503 would tell the client to retry what can never succeed: a budget under the primary's least
run, or fewer steps than a static primary runs, and under every fallback's least. The message
says why, fewer experts per token included where the primary has experts.
"""

from __future__ import annotations

from adaptive.serving.engine import PER_EXPERT
from adaptive.serving.http_input import BadRequest


def check_answerable(parsed, primary, rungs: dict, mode: str) -> None:
    """Raises BadRequest(400) for `parsed` (a parsed /predict body) when neither `primary` nor
    any of `rungs` (the fallbacks the policy `mode` may fall back to, by name) keeps its budget."""
    if parsed.budget_value is None or (parsed.steps >= 1 and not primary.fixed_depth):
        return  # an adaptive primary answers any budget it has a step for
    if any(e.steps_within(parsed.budget_value, parsed.unit) for e in (primary, *rungs.values())):
        return
    if mode != "shed" and any(parsed.expert_steps or ()):
        return  # the primary keeps it at fewer experts (shedding runs the experts as trained)
    known = {name: value for name, e in rungs.items() if (value := e.least_budget(parsed.unit)) is not None}
    none = "; no fallback runs within it" if rungs else ""
    if known:
        name = min(known, key=known.get)
        none += f" (the least: {known[name]:g} {parsed.unit}, on {name})"
    experts = _at_its_experts(parsed, primary)
    if parsed.steps < 1:
        raise BadRequest(400, parsed.below_primary + experts + none)
    raise BadRequest(
        400,
        f"budget {parsed.budget_value:g} {parsed.unit} allows {parsed.steps} of this static model's "
        f"{primary.cap} steps, and it runs all of them{experts}{none}",
    )


def _at_its_experts(parsed, primary) -> str:
    """Why fewer experts per token did not keep the budget, where the primary has experts."""
    k = primary.meta.get("caps", {}).get("experts_per_token")
    if k is None or k < 2 or parsed.unit not in PER_EXPERT:  # the experts do not change this price
        return ""
    if any(parsed.expert_steps or ()):  # fewer would fit: only shedding leaves them out
        return f" at its {k} experts per token (the shed policy runs no fewer)"
    if not primary.expert_budgets:
        point = primary.meta.get("point")
        if point:  # point_meta leaves the base model's expert variants out: they run its weights
            where = f"operating point {point['precision']},{point['prune']:g} has"
        else:
            where = "artifact has"
        return f" at its {k} experts per token (this {where} no fewer-experts variants)"
    return " (at 1 expert per token too)"
