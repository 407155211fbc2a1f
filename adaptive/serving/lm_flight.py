"""One generation request from arrival to its last answer: what it has made so far, and the
events its handler sends (a token event each when streaming, then the summary)."""

from __future__ import annotations

import asyncio
import codecs
from dataclasses import dataclass, field

from adaptive.serving.lm_engine import Token
from adaptive.serving.lm_http_input import GenerateInput

FINISHED = ("ok", "degraded", "fallback")  # the statuses of a request that ran to its stop


@dataclass(eq=False)  # identity: two requests with equal fields are still two requests
class InFlight:
    request: GenerateInput
    arrival: float
    events: asyncio.Queue = field(repr=False)
    model: str = "primary"
    slot: int = -1
    tokens: list = field(default_factory=list)
    text: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    experts: list = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    prefill_flops: float = 0.0
    decode_flops: float = 0.0  # the tokens after the first: what flops_budget bounds
    cancelled: bool = False
    rung: int = 0  # the controller's rung of its own threshold
    joined_at: float = 0.0
    degraded: int = 0  # tokens made at a looser rung than its own
    # bytes to text as they come: a character split over two tokens is written once whole
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def add(self, token: Token, now: float) -> None:
        """A token made for this request (token.token >= 0), streamed when it asked."""
        if self.first_at is None:
            self.first_at = now
        else:
            self.decode_flops += token.flops
        self.last_at = now
        piece = self.decoder.decode(bytes([token.token]) if token.token < 256 else b"")
        self.tokens.append(token.token)
        self.text.append(piece)
        self.layers.append(token.layers)
        self.experts.append(token.experts)
        if self.request.stream:
            event = {"index": len(self.tokens) - 1, "token": token.token, "text": piece, "layers": token.layers}
            self.events.put_nowait({**event, "experts": token.experts})

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_at is None else 1e3 * (self.first_at - self.arrival)

    @property
    def tpot_ms(self) -> float | None:
        """The mean time per token after the first (None under two tokens)."""
        n = len(self.tokens)
        return 1e3 * (self.last_at - self.first_at) / (n - 1) if n > 1 else None

    def within_budget(self, status: str) -> bool | None:
        """Whether a request that ran to its stop kept its FLOPs budget (None: it set none, or
        did not run to its stop)."""
        budget = self.request.limits.get("flops_budget")
        if budget is None or status not in FINISHED:
            return None
        return self.decode_flops <= budget * (1 + 1e-6)

    def within_sla(self, status: str, ttft_sla_ms: float, tpot_sla_ms: float) -> bool | None:
        """Whether a request that ran to its stop kept the server's SLAs: its first token within
        `ttft_sla_ms` of arrival, and its mean time per later token within `tpot_sla_ms` (None:
        it did not run to its stop). Admission predicts both; this is what happened, so a client
        is told when a request admitted on time came late (a contended machine)."""
        if status not in FINISHED or self.ttft_ms is None:
            return None
        return self.ttft_ms <= ttft_sla_ms and (self.tpot_ms is None or self.tpot_ms <= tpot_sla_ms)

    def answer(
        self,
        status: str,
        stop: str | None,
        error: str | None = None,
        reason: str | None = None,
        within_sla: bool | None = None,
    ) -> None:
        """The summary, the request's last event; a request that did not stream gets its text
        and tokens in it. `error`: what failed; `reason`: why it was rejected; `within_sla`: see
        `within_sla` (the server knows its SLAs)."""
        self.text.append(self.decoder.decode(b"", final=True))
        summary = {
            "done": True,
            "status": status,
            "model": self.model,
            "stop": stop,
            "count": len(self.tokens),
            "degraded_tokens": self.degraded,
            "ttft_ms": self.ttft_ms,
            "tpot_ms": self.tpot_ms,
            "layers": self.layers,
            "experts": self.experts,
            "prefill_flops": self.prefill_flops,
            "flops": self.decode_flops,
            "within_budget": self.within_budget(status),
            "within_sla": within_sla,
        }
        if error is not None:
            summary["error"] = error
        if reason is not None:
            summary["reason"] = reason
        if not self.request.stream:
            summary = {**summary, "text": "".join(self.text), "tokens": self.tokens}
        self.events.put_nowait(summary)
