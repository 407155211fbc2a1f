"""The baseline policies of the serving controller (adaptive.serving.controller): what a
practitioner would run without an adaptive model, and what the controller is measured against.

`mode="static"`: every request gets its requested budget on the primary model (at the most
experts it allows, on a MoE model), nothing is shed or deferred. `mode="shed"`: the static
policy with deadline shedding: every request admitted runs at its requested
budget on the primary, and a request that cannot finish within its deadline (`headroom` x SLA
from its arrival, the controller's own) at this policy's measured service time is rejected: at
arrival, when the full batches queued ahead of it and then its own batch would end past the
deadline (`sheds`); and when its batch is about to run, when that run would end past it (`plan`).
A prediction is not a measurement, though: a request that finds the queue empty is admitted,
and of a batch whose rows would all be late (none yet past its deadline) the freshest still
runs. Otherwise one slow run (a pause of the machine) inflates the estimate, everything is
shed, nothing runs, and the estimate is never corrected: the server rejects everything forever.
"""

from __future__ import annotations

import dataclasses

from adaptive.serving.decisions import REJECTED, Decision, Request

EPS_MS = 1e-9  # estimates that meet a limit exactly fit it (float sums land either side)


class BaselinePolicies:
    """`mode="static"` and `mode="shed"`, as methods of the Controller (which holds the service
    times, the deadline and the primary's step range they read)."""

    def sheds(self, queued: int, steps: int) -> bool:
        """Shed mode: True when a request arriving behind `queued` others (at least one), asking
        `steps`, would finish past its deadline: the full batches ahead of it and then its own,
        each at the measured run of a batch that size at its step budget (the batch running now
        is not counted: `plan` checks again when the request's batch is about to run)."""
        if self.mode != "shed" or queued < 1:
            return False
        times, steps = self.service["primary", None], self._clip(steps)
        full, own = divmod(queued, self.max_batch)
        return full * times.estimate(steps, self.max_batch) + times.estimate(steps, own + 1) > self.horizon_ms + EPS_MS

    def _shed(self, requests: list[Request]) -> list[Decision]:
        """Shed mode: each row at its requested budget on the primary, timed as the server runs
        the batch (`groups`). Rows already past their deadline are rejected; then, while a row
        would finish past it, the stalest such row is rejected and the rest timed again without
        it, down to the last row, which runs (see the module's docstring)."""
        deadline = self.horizon_ms + EPS_MS
        times = self.service["primary", None]
        kept = [i for i, r in enumerate(requests) if r.waited_ms < deadline and self._fits(r)]
        while len(kept) > 1:
            finish, _, _ = self._runs(times, [self._clip(requests[i].steps) for i in kept], 0.0)
            late = [i for i, t in zip(kept, finish, strict=True) if requests[i].waited_ms + t > deadline]
            if not late:
                break
            kept.remove(max(late, key=lambda i: requests[i].waited_ms))  # the stalest first: one less row
            # makes the runs quicker, and may bring the others in time
        decisions = [REJECTED] * len(requests)
        for i in kept:
            decisions[i] = Decision("ok", "primary", self._clip(requests[i].steps))
        return decisions

    def _static(self, request: Request) -> Decision:
        """Static mode: the request's own budget, at the most experts it allows (rejected where none)."""
        k = next((k for k in self.expert_budgets if self._fits(request, k)), "none")
        if k == "none":
            return dataclasses.replace(REJECTED, reason="no expert budget of the primary keeps the request's budget")
        return Decision("ok", "primary", self._clip(self._asked(request, k)), k)
