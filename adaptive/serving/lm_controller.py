"""The degradation ladder for generation: what each slot runs at, step by step, and who joins.

A language model under load has more rungs than a classifier. Per decode step and per slot the
controller picks a rung: the request's own exit threshold, then each looser threshold that
`adaptive calibrate-exits` measured (validation agreement with the full model, blocks per
token), then fewer experts per token at the loosest. It keeps the predicted step time within
the time-per-output-token SLA, degrading the least important slots first (priority 9 before
0; within a priority, the youngest request, which has the most tokens still to come and so the
most chance to be repaired by a later step); requests already streaming are never dropped.

The step time is predicted from what the steps so far measured: milliseconds against the blocks
they ran over all slots (a least-squares line on exponentially weighted sums, so it follows a
changing machine), and each rung's blocks per token, measured as it is used (the calibration's
validation figure until then). A prefill happens between steps, so joining delays every running
slot's next token by the prefill's time: requests join while the step plus their prefills fit
the SLA (at least one per step, so nobody waits forever).

For a request waiting for a slot, `route` says where it goes: the primary when a slot is free
and the slots, all at their loosest rung, would still keep the SLA (or none is running); else
the fallback model if it has a slot and either the wait would break the time-to-first-token SLA
or the primary cannot take one more slot within the TPOT SLA; else it waits, or, under a
shedding policy, is rejected when its predicted wait already breaks the TTFT SLA.

Policies: "adaptive" is all of the above; "static" serves every request at its own limits in
arrival order (priority first), however long it waits; "shed" is static, but rejects a request
whose wait would break the TTFT SLA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adaptive.inference.token_step import NO_EXITS

POLICIES = ("adaptive", "static", "shed")  # as `adaptive serve --policy` names them


@dataclass
class Rung:
    threshold: float  # exit threshold (NO_EXITS: every block)
    experts: int  # expert cap per token
    agreement: float | None  # validation token agreement with the full model (None: not measured)
    blocks: float  # blocks per token expected (updated as measured)


def ladder(meta: dict) -> list[Rung]:
    """The rungs of a language model's artifact, strictest first: full depth, each threshold its
    calibration tested (with its validation disagreement and blocks), then one expert fewer per
    token at a time, at the loosest threshold."""
    depth, k = int(meta["caps"]["layers"]), int(meta["caps"]["experts_per_token"])
    rungs = [Rung(NO_EXITS, k, 1.0, float(depth))]
    calibrated = (meta.get("exit_threshold") or {}).get("calibrated") or {}
    for entry in sorted(calibrated.get("tested", []), key=lambda e: -e["threshold"]):
        rungs.append(Rung(float(entry["threshold"]), k, 1.0 - float(entry["disagreement"]), float(entry["blocks"])))
    loosest = rungs[-1]
    for experts in range(k - 1, 0, -1):
        rungs.append(Rung(loosest.threshold, experts, None, loosest.blocks))
    return rungs


class StepTime:
    """ms of a step against the blocks it ran over all slots: a line fitted to exponentially
    weighted sums (`decay` per observation)."""

    def __init__(self, decay: float = 0.98):
        self.decay, self.sums = decay, np.zeros(5)  # n, x, y, xx, xy

    def observe(self, blocks: float, ms: float) -> None:
        self.sums = self.decay * self.sums + np.array([1.0, blocks, ms, blocks * blocks, blocks * ms])

    def predict(self, blocks: float) -> float | None:
        n, x, y, xx, xy = self.sums
        if n < 1e-9:
            return None
        mean_x, mean_y = x / n, y / n
        var = xx / n - mean_x**2
        if var <= 1e-6 * max(mean_x**2, 1.0):  # one load level seen: proportional
            return mean_y * blocks / mean_x if mean_x > 0 else mean_y
        slope = max((xy / n - mean_x * mean_y) / var, 0.0)
        return max(mean_y + slope * (blocks - mean_x), 0.0)


class LMController:
    def __init__(self, rungs: list[Rung], *, tpot_ms: float, ttft_ms: float, policy: str = "adaptive"):
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.rungs, self.tpot_ms, self.ttft_ms, self.policy = rungs, tpot_ms, ttft_ms, policy
        self.step_time, self.prefill_ms = StepTime(), None
        self._measured = [[0.0, 0] for _ in rungs]  # per rung: blocks, tokens

    # -- measurements ------------------------------------------------------------------------

    def observe_step(self, blocks_by_rung: list[tuple[int, float]], ms: float) -> None:
        """A step took `ms`; (rung, blocks run) for every slot that made a token in it."""
        self.step_time.observe(sum(b for _, b in blocks_by_rung), ms)
        for rung, blocks in blocks_by_rung:
            self._measured[rung][0] += blocks
            self._measured[rung][1] += 1

    def observe_prefill(self, ms: float) -> None:
        self.prefill_ms = ms if self.prefill_ms is None else 0.8 * self.prefill_ms + 0.2 * ms

    def blocks(self, rung: int) -> float:
        total, tokens = self._measured[rung]
        return total / tokens if tokens >= 8 else self.rungs[rung].blocks

    def predicted_step_ms(self, rungs: list[int]) -> float:
        ms = self.step_time.predict(sum(self.blocks(r) for r in rungs))
        return 0.0 if ms is None else ms

    # -- decisions -----------------------------------------------------------------------------

    def start_rung(self, threshold: float) -> int:
        """A request's own rung: the loosest that changes nothing for it (a step runs each slot
        at the looser of its rung and its own limits), so that one rung more degrades it."""
        k = self.rungs[0].experts
        same = [i for i, rung in enumerate(self.rungs) if rung.experts == k and rung.threshold >= threshold - 1e-6]
        return max(same, default=0)

    def plan_step(self, slots: list[tuple[int, int, float, int]], other_ms: float = 0.0) -> dict[int, int]:
        """{slot: rung} for a step of `slots` (slot, priority, joined at, own rung): each at its
        own rung, then the least important degraded a rung at a time while the predicted step,
        plus `other_ms` of other work between two tokens (a fallback's step), breaks the SLA."""
        plan = {slot: own for slot, _, _, own in slots}
        if self.policy != "adaptive":
            return plan
        order = sorted(slots, key=lambda s: (-s[1], -s[2]))  # priority 9 first, then the youngest
        last = len(self.rungs) - 1
        while self.predicted_step_ms(list(plan.values())) + other_ms > self.tpot_ms:
            for slot, *_ in order:
                if plan[slot] < last:
                    plan[slot] += 1
                    break
            else:
                break  # every slot at the loosest rung: nothing left to give
        return plan

    def joins_now(self, running_rungs: list[int], joining: int) -> bool:
        """Whether one more request may prefill before the next step: the step plus the
        prefills so far fit the SLA (the first one always may; static policies never wait)."""
        if joining == 0 or self.policy != "adaptive":
            return True
        step = self.predicted_step_ms(running_rungs)
        return step + (joining + 1) * (self.prefill_ms or 0.0) <= self.tpot_ms

    def admits(self, free: int, occupancy: int) -> int:
        """How many waiting requests the primary's `free` slots take at its next turn, with
        `occupancy` running: each until one more would slow every step past the TPOT SLA."""
        taken = 0
        while (
            taken < free
            and self.route(primary_free=True, occupancy=occupancy + taken, fallback_free=False, wait_ms=0.0)
            == "primary"
        ):
            taken += 1
        return taken

    def route(self, *, primary_free: bool, occupancy: int, fallback_free: bool, wait_ms: float) -> str:
        """Where a waiting request goes now: "primary", "fallback", "wait" or "reject"."""
        loosest = [len(self.rungs) - 1] * (occupancy + 1)
        # with nobody running, a request is served however slow its steps: no one else's SLA is at stake
        fits = self.policy != "adaptive" or occupancy == 0 or self.predicted_step_ms(loosest) <= self.tpot_ms
        if primary_free and fits:
            return "primary"
        late = wait_ms > self.ttft_ms
        if self.policy == "adaptive" and fallback_free and (late or not fits):
            return "fallback"
        if late and self.policy in ("adaptive", "shed"):
            return "reject"
        return "wait"
