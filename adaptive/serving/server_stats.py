"""What the server counts for GET /metrics: answers by status, bad requests by code, latency,
budget adherence, and the event loop's cost of a request and the arrival rate the controller
plans with."""

from __future__ import annotations

import time

import numpy as np

from adaptive.serving.controller import Controller
from adaptive.serving.decisions import STATUSES

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Stats:
    """Counters for /metrics."""

    def __init__(self):
        self.by_status = dict.fromkeys((*STATUSES, "error"), 0)
        self.bad_by_code: dict[int, int] = {}  # 400, 408, 413, 415
        self.dropped = 0  # clients gone before their body arrived: nobody to answer
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.latency_sum_ms = 0.0
        self.within_budget = 0
        self.answered = 0

    def record(self, status: str, latency_ms: float | None = None, within: bool = True) -> None:
        self.by_status[status] += 1
        if latency_ms is not None:
            self.latency_counts[int(np.searchsorted(LATENCY_BUCKETS_MS, latency_ms))] += 1
            self.latency_sum_ms += latency_ms
            self.answered += 1
            self.within_budget += int(within)

    @property
    def bad_requests(self) -> int:
        return sum(self.bad_by_code.values())

    def bad(self, code: int) -> None:
        self.bad_by_code[code] = self.bad_by_code.get(code, 0) + 1

    def prometheus(self, queue: int, controller: Controller, connections=None) -> str:
        """`connections`: the server's ConnectionLimit (open and refused connections), if any."""
        lines = ["# TYPE adaptive_requests_total counter"]
        lines += [f'adaptive_requests_total{{status="{s}"}} {n}' for s, n in self.by_status.items()]
        lines += ["# TYPE adaptive_bad_requests_total counter", f"adaptive_bad_requests_total {self.bad_requests}"]
        lines += ["# TYPE adaptive_bad_requests_by_code_total counter"]
        lines += [f'adaptive_bad_requests_by_code_total{{code="{c}"}} {n}' for c, n in sorted(self.bad_by_code.items())]
        lines += [
            "# TYPE adaptive_dropped_connections_total counter",
            f"adaptive_dropped_connections_total {self.dropped}",
        ]
        if connections is not None:
            lines += ["# TYPE adaptive_open_connections gauge", f"adaptive_open_connections {connections.open}"]
            lines += [
                "# TYPE adaptive_refused_connections_total counter",
                f"adaptive_refused_connections_total {connections.refused}",
            ]
        lines += ["# TYPE adaptive_request_latency_ms histogram"]
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), self.latency_counts, strict=True):
            running += count
            lines.append(f'adaptive_request_latency_ms_bucket{{le="{bound}"}} {running}')
        lines += [
            f"adaptive_request_latency_ms_sum {self.latency_sum_ms:.3f}",
            f"adaptive_request_latency_ms_count {running}",
        ]
        adherence = self.within_budget / self.answered if self.answered else 1.0
        lines += ["# TYPE adaptive_budget_adherence gauge", f"adaptive_budget_adherence {adherence:.6f}"]
        lines += ["# TYPE adaptive_queue_length gauge", f"adaptive_queue_length {queue}"]
        lines += ["# TYPE adaptive_step_cap gauge", f"adaptive_step_cap {controller.current_step_cap:g}"]
        return "\n".join(lines) + "\n"


class RequestCost:
    """CPU time the event loop spends per request received (HTTP, JSON, validation, planning):
    the server's cost of a request whatever model answers it, shown in /metrics: on a machine
    whose cores the model runs share, what bounds the rate even the cheapest model serves.
    `time.thread_time` on the loop thread, over windows of at least 64 requests, smoothed."""

    def __init__(self, window: int = 64):
        self.window, self.ms = window, 0.0
        self._mark: tuple[float, int] | None = None

    def update(self, received: int) -> float:
        """Called on the loop thread with the count of requests received so far; the estimate."""
        now = time.thread_time()
        if self._mark is None:
            self._mark = (now, received)
        elif received - self._mark[1] >= self.window:
            per = 1e3 * (now - self._mark[0]) / (received - self._mark[1])
            self.ms = per if self.ms == 0.0 else 0.8 * self.ms + 0.2 * per
            self._mark = (now, received)
        return self.ms


class ArrivalRate:
    """Requests per second arriving now: an exponentially weighted rate with time constant
    `tau_s` (0.1 s: a 3x spike is 63% seen within 0.1 s; the queue it builds meanwhile counts
    in `Controller.batch_time_ms` at once)."""

    def __init__(self, tau_s: float = 0.1):
        self.tau_s, self.rate = tau_s, 0.0
        self._mark: tuple[float, int] | None = None

    def update(self, now: float, received: int) -> float:
        """`received`: requests received so far, at perf_counter time `now`; the estimate."""
        if self._mark is not None and now > self._mark[0]:
            elapsed = now - self._mark[0]
            weight = 1.0 - np.exp(-elapsed / self.tau_s)
            self.rate += weight * ((received - self._mark[1]) / elapsed - self.rate)
        self._mark = (now, received)
        return self.rate
