"""Continuous batching's host half: which request holds which decode slot.

`LMEngine` wraps the slot functions of one language model (a live `SlotDecoder`, or an
artifact's, adaptive.inference.lm_export.ExportedSlots): `join` prefills a request into a free
slot and returns its first token, `step` makes one token for every slot still generating and
frees the slots whose sequences stopped. It holds no requests and no clocks, only slots: the
server decides who joins and when. Everything it calls runs compiled executables of fixed
shapes, so joining and leaving never recompile.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from adaptive.inference.token_step import STOP_REASONS


@dataclass
class Token:
    """One generated token of the sequence in `slot`, read back to the host."""

    slot: int
    token: int
    layers: float  # blocks run for it
    experts: float  # expert applications for it
    flops: float  # its FLOPs (the first token: the whole prompt's prefill)
    stop: str  # "running" or why the sequence ended with it ("budget": it ended without one)


class LMEngine:
    def __init__(self, slots, name: str = ""):
        """`slots`: empty() / prefill(state, slot, prompt, length, limits) /
        step(state, threshold_S, expert_cap_S) / leave(state, slot), with
        `slots`, `prompt_capacity`, `new_capacity` and `limits(batch, **kwargs)`."""
        self.fns, self.name = slots, name
        self.warmup: list[tuple[float, float]] = []  # (blocks run, ms) of the warm-up's steps
        self.prefill_ms: float | None = None
        self.slots, self.prompt_capacity = slots.slots, slots.prompt_capacity
        self.reset()

    def reset(self) -> None:
        """Every slot empty (after a failed call, whose state may have been consumed)."""
        self.state = self.fns.empty()
        self.free = list(range(self.slots))[::-1]  # pop() takes the lowest
        self.active: set[int] = set()
        self.left = [0] * self.slots  # per slot: the most tokens its sequence may still make

    def limits(self, **kwargs):
        """One request's checked limits (ValueError in one line when out of range)."""
        return self.fns.limits(1, **kwargs)

    def join(self, prompt: np.ndarray, limits) -> Token:
        """Prefill `prompt` (1..P tokens) into a free slot: its first token. A request whose
        first token ends it leaves its slot at once."""
        if not self.free:
            raise RuntimeError("no free slot: step until one frees")
        prompt = np.asarray(prompt, np.int32)
        if prompt.ndim != 1 or not 1 <= len(prompt) <= self.prompt_capacity:
            raise ValueError(f"a prompt is 1 to {self.prompt_capacity} tokens; got shape {prompt.shape}")
        slot = self.free.pop()
        padded = np.zeros((self.prompt_capacity,), np.int32)
        padded[: len(prompt)] = prompt
        self.state, joined = self.fns.prefill(self.state, np.int32(slot), padded, np.int32(len(prompt)), limits)
        token, stop, layers, experts, flops = (np.asarray(x) for x in jax.device_get(joined))
        if stop == 0:
            self.active.add(slot)
            self.left[slot] = int(np.asarray(limits.max_new_tokens_B)[0]) - 1
        else:
            self.free.append(slot)
        return Token(slot, int(token), float(layers), float(experts), float(flops), STOP_REASONS[int(stop)])

    def step(self, threshold_S=None, expert_cap_S=None) -> list[Token]:
        """One token for every active slot (those that stop for their budget get none: their
        Token says so with token -1); their slots are freed. `threshold_S`, `expert_cap_S`: a
        degradation for this step, per slot (None: none)."""
        if not self.active:
            return []
        self.state, made = self.fns.step(self.state, threshold_S, expert_cap_S)
        token, valid, layers, experts, flops, stop = (np.asarray(x) for x in jax.device_get(made))
        out = []
        for slot in sorted(self.active):
            reason = STOP_REASONS[int(stop[slot])]
            got = int(token[slot]) if valid[slot] else -1
            out.append(Token(slot, got, float(layers[slot]), float(experts[slot]), float(flops[slot]), reason))
            self.left[slot] -= int(valid[slot])
            if reason != "running":
                self.active.discard(slot)
                self.free.append(slot)
        self.free.sort(reverse=True)
        return out

    def warm(self) -> None:
        """Runs each function (one slot joins and steps; then every slot joins and steps
        twice), so the first request served compiles nothing, and times the second round: `warmup` holds
        (blocks run over the slots, ms) of each step and `prefill_ms` the prefills' mean, a
        controller's first estimates. The slots are empty after."""
        import time

        # as many tokens as the two timed steps make, where the artifact allows that many
        limits = self.limits(max_new_tokens=min(4, self.fns.new_capacity))
        prompt = np.zeros((1,), np.int32)
        self.join(prompt, limits)  # compiles the prefill (its first few calls are slower still)
        self.step()  # compiles the step
        self.reset()
        start = time.perf_counter()
        for _ in range(self.slots):
            self.join(prompt, limits)
        self.prefill_ms = 1e3 * (time.perf_counter() - start) / self.slots
        self.warmup = []
        for _ in range(2):
            start = time.perf_counter()
            made = self.step()
            self.warmup.append((sum(t.layers for t in made), 1e3 * (time.perf_counter() - start)))
        self.reset()

    def leave(self, slot: int) -> None:
        """The sequence in `slot` stops now (its client left): the slot is free for the next."""
        if slot in self.active:
            self.state = self.fns.leave(self.state, np.int32(slot))
            self.active.discard(slot)
            self.free.append(slot)
            self.free.sort(reverse=True)

    def tokens_left(self) -> list[int]:
        """Per active slot: the most tokens its sequence may still make (EOS may end it sooner)."""
        return [self.left[slot] for slot in self.active.copy()]  # a copy: a step may be changing it

    @property
    def in_use(self) -> int:
        return len(self.active)
