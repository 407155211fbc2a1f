"""What the generation server counts for GET /metrics: time to first token and time per output
token as histograms, tokens per second, the compute each token took (blocks, experts, decode
FLOPs; prefill FLOPs apart), slots in use, FLOPs-budget adherence, and answers by status."""

from __future__ import annotations

import collections
import math
import time

import numpy as np

from adaptive.serving.lm_flight import FINISHED

TTFT_BUCKETS_MS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
TPOT_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200)
LM_STATUSES = ("ok", "degraded", "fallback", "rejected", "deferred", "cancelled", "error")


class Histogram:
    """A Prometheus histogram: cumulative counts at fixed bounds, a sum and a count."""

    def __init__(self, name: str, bounds: tuple[float, ...]):
        self.name, self.bounds = name, bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self.bounds, value))] += 1
        self.sum += value

    def lines(self) -> list[str]:
        out, running = [f"# TYPE {self.name} histogram"], 0
        for bound, count in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            running += count
            out.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        return [*out, f"{self.name}_sum {self.sum:.3f}", f"{self.name}_count {running}"]


class TokenRate:
    """Tokens per second over the last `window_s` seconds. `add` runs on the event loop once per
    generated token: constant time (a deque and a running sum), whatever the traffic."""

    def __init__(self, window_s: float = 5.0):
        self.window_s, self.events, self._in_window = window_s, collections.deque(), 0

    def add(self, tokens: int, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self.events.append((now, tokens))
        self._in_window += tokens
        self._forget(now)

    def rate(self, now: float | None = None) -> float:
        self._forget(time.perf_counter() if now is None else now)
        return self._in_window / self.window_s

    def _forget(self, now: float) -> None:
        while self.events and self.events[0][0] < now - self.window_s:
            self._in_window -= self.events.popleft()[1]


class LMStats:
    def __init__(self, ttft_sla_ms: float = math.inf, tpot_sla_ms: float = math.inf):
        """`ttft_sla_ms`, `tpot_sla_ms`: the server's SLAs, whose misses are counted (a histogram's
        buckets would only bound them)."""
        self.ttft_sla_ms, self.tpot_sla_ms = ttft_sla_ms, tpot_sla_ms
        self.ttft_over_sla, self.tpot_over_sla = 0, 0
        self.by_status = dict.fromkeys(LM_STATUSES, 0)
        self.bad_by_code: dict[int, int] = {}
        self.ttft = Histogram("adaptive_lm_ttft_ms", TTFT_BUCKETS_MS)
        self.tpot = Histogram("adaptive_lm_tpot_ms", TPOT_BUCKETS_MS)
        self.tokens, self.layers, self.experts, self.rate = 0, 0.0, 0.0, TokenRate()
        # FLOPs as the answers report them: a request's first token comes with its prompt's
        # prefill (`prefill_flops`), each later one with its own decode step (`flops`).
        self.prefill_flops, self.decode_flops, self.decode_tokens = 0.0, 0.0, 0
        self.with_budget, self.within_budget = 0, 0

    def bad(self, code: int) -> None:
        self.bad_by_code[code] = self.bad_by_code.get(code, 0) + 1

    def token(self, layers: float, experts: float, flops: float = 0.0, first: bool = False) -> None:
        """A token made: its blocks and experts; `flops`: its prompt's prefill when `first`, else
        its decode step's."""
        self.tokens += 1
        self.layers += layers
        self.experts += experts
        self.rate.add(1)
        if first:
            self.prefill_flops += flops
        else:
            self.decode_flops += flops
            self.decode_tokens += 1

    def finished(self, status: str, ttft_ms: float | None, tpot_ms: float | None, within: bool | None) -> None:
        """A request answered: its TTFT, its mean time per token after the first (None with one
        token), whether its FLOPs stayed within its budget (None: it gave none). The histograms
        take every request that made a token; the SLA misses count only requests that ran to
        their stop, the ones whose answers carry `within_sla`, so the counters and the answers
        agree (a request cut short by an error or a cancellation is counted by its status)."""
        self.by_status[status] += 1
        ran_to_stop = status in FINISHED
        if ttft_ms is not None:
            self.ttft.observe(ttft_ms)
            self.ttft_over_sla += int(ran_to_stop and ttft_ms > self.ttft_sla_ms)
        if tpot_ms is not None:
            self.tpot.observe(tpot_ms)
            self.tpot_over_sla += int(ran_to_stop and tpot_ms > self.tpot_sla_ms)
        if within is not None:
            self.with_budget += 1
            self.within_budget += int(within)

    def prometheus(
        self, slots_in_use: int, slots: int, waiting: int, connections=None, step_ms=None, prefill_ms=None
    ) -> str:
        """The Prometheus text; `step_ms`: each model's smoothed step time (None: none measured
        yet), `prefill_ms`: the primary's smoothed prefill time."""
        lines = ["# TYPE adaptive_lm_requests_total counter"]
        lines += [f'adaptive_lm_requests_total{{status="{s}"}} {n}' for s, n in self.by_status.items()]
        lines += ["# TYPE adaptive_bad_requests_by_code_total counter"]
        lines += [f'adaptive_bad_requests_by_code_total{{code="{c}"}} {n}' for c, n in sorted(self.bad_by_code.items())]
        lines += self.ttft.lines() + self.tpot.lines()
        per_token = max(self.tokens, 1)
        adherence = self.within_budget / self.with_budget if self.with_budget else 1.0
        gauges = {
            "adaptive_lm_tokens_total": self.tokens,
            "adaptive_lm_tokens_per_second": round(self.rate.rate(), 3),
            "adaptive_lm_layers_per_token": round(self.layers / per_token, 4),
            "adaptive_lm_experts_per_token": round(self.experts / per_token, 4),
            # decode FLOPs per token after each request's first (a flops_budget bounds their sum)
            "adaptive_lm_decode_flops_per_token": round(self.decode_flops / max(self.decode_tokens, 1), 1),
            "adaptive_lm_decode_flops_total": round(self.decode_flops, 1),
            "adaptive_lm_prefill_flops_total": round(self.prefill_flops, 1),
            "adaptive_lm_slots_in_use": slots_in_use,
            "adaptive_lm_slots": slots,
            "adaptive_lm_waiting": waiting,
            "adaptive_lm_budget_adherence": round(adherence, 6),
            "adaptive_lm_ttft_over_sla_total": self.ttft_over_sla,  # answers whose first token came late
            "adaptive_lm_tpot_over_sla_total": self.tpot_over_sla,  # whose mean time per token was over
        }
        if connections is not None:
            gauges["adaptive_open_connections"] = connections.open
        for name, value in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += ["# TYPE adaptive_lm_step_ms gauge"]
        lines += [f'adaptive_lm_step_ms{{model="{m}"}} {ms:.4f}' for m, ms in (step_ms or {}).items() if ms is not None]
        if prefill_ms is not None:
            lines += ["# TYPE adaptive_lm_prefill_ms gauge", f"adaptive_lm_prefill_ms {prefill_ms:.4f}"]
        return "\n".join(lines) + "\n"
