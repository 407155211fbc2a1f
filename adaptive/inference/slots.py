"""Continuous batching's device half: a fixed number of decode slots that requests join and leave.

A server keeps S slots, each one sequence's KV cache (P prompt + M new positions), its limits,
its last token and its FLOPs budget left, all on the device in one `SlotState`. Two functions,
each compiled once, change it:

- `prefill(state, slot, prompt, length, limits)`: a new request's prompt (right-padded to P)
  into one slot, whose previous contents it replaces; it yields the request's first token;
- `step(state, threshold_S, expert_cap_S)`: one token for every active slot, each under its own
  limits (exit threshold, layer and expert caps, MoD bias, sampling, paced FLOPs budget), by the
  same rules as `Decoder`'s loop (adaptive.inference.token_step), with the block-level row
  compaction of adaptive.nn.lm_decode: slots that exited early, or are empty, are not run above
  their exit. The two per-slot inputs are a server's degradation for this one step: a slot runs
  at the looser of them and its request's own threshold and expert cap.

Between steps the host admits requests into free slots and retires finished ones; shapes never
change, so nothing recompiles in steady state (`traces` counts). `SlotDecoder` runs a live
model; `adaptive export` writes both functions into a language model's artifact
(adaptive.inference.lm_export), whose state is the flat list of `SlotState`'s arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.compute.lm_flops import LMFlops
from adaptive.inference.token_step import NO_EXITS, GenerationLimits, Made, Pacer, checked_limits, clipped
from adaptive.nn import lm_decode
from adaptive.nn.lm_blocks import KVCache


class SlotState(NamedTuple):
    """Every slot's sequence (S rows); an all-zero state is S empty slots."""

    caches: tuple[KVCache, ...]
    limits: GenerationLimits  # as clipped when the request joined
    last_S: jax.Array  # int32: the slot's last token, fed at the next step
    position_S: jax.Array  # int32: that token's position
    count_S: jax.Array  # int32: tokens made so far
    remaining_S: jax.Array  # float32: FLOPs budget left for the tokens after the first
    active_S: jax.Array  # bool: the slot holds a sequence still generating


class Joined(NamedTuple):
    """A request's first token, from its prompt's prefill (scalars)."""

    token: jax.Array
    stop: jax.Array  # int32, index into STOP_REASONS (0: it goes on)
    layers: jax.Array  # float32: blocks run for the prompt's last position
    experts: jax.Array
    prefill_flops: jax.Array  # float32: the whole prompt's, priced per token as needed


class SlotDecoder:
    """The prefill and step functions of one language model for S slots, compiled once each."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params,
        flops: LMFlops,
        worst_DxE,
        *,
        slots: int,
        prompt_capacity: int,
        new_capacity: int,
        compact: bool = True,
    ):
        if slots < 1:
            raise ValueError(f"slots={slots} must be >= 1")
        self.graphdef, self.params, self.flops, self.worst_DxE = graphdef, params, flops, worst_DxE
        self.slots, self.prompt_capacity, self.new_capacity, self.compact = (
            slots,
            prompt_capacity,
            new_capacity,
            compact,
        )
        model = nnx.merge(graphdef, params)
        self.blocks = model.num_layers
        moe = model.blocks[0].moe
        self.max_experts = moe.k if moe is not None else 1
        self.traces = {"prefill": 0, "step": 0}
        self._prefill = jax.jit(self.prefill_fn, donate_argnums=1)
        self._step = jax.jit(self.step_fn, donate_argnums=1)
        self._leave = jax.jit(lambda active_S, slot: active_S.at[slot].set(False))

    @classmethod
    def of(cls, decoder, slots: int, *, compact: bool = True) -> SlotDecoder:
        """The slot functions of a `Decoder`'s model, capacities, pricing and limit checks."""
        decoder.check_cache_fits(slots, prefilled=1)  # every slot holds a whole cache; one prefills at a time
        return cls(
            decoder.graphdef,
            decoder.params,
            decoder.flops,
            decoder.worst_DxE,
            slots=slots,
            prompt_capacity=decoder.prompt_capacity,
            new_capacity=decoder.new_capacity,
            compact=compact,
        )

    def limits(self, batch: int, **given) -> GenerationLimits:
        """Checked limits (adaptive.inference.token_step.checked_limits)."""
        return checked_limits(batch, self.new_capacity, self.blocks, self.max_experts, **given)

    # -- host side ----------------------------------------------------------------------------

    def empty(self) -> SlotState:
        """S empty slots."""
        model = nnx.merge(self.graphdef, self.params)
        s, size = self.slots, self.prompt_capacity + self.new_capacity
        caches = lm_decode.empty_cache(model, s, size)
        zeros = [jnp.zeros((s,), dtype) for dtype in LIMIT_DTYPES]
        state = SlotState(
            caches,
            GenerationLimits(*zeros),
            jnp.zeros((s,), jnp.int32),
            jnp.zeros((s,), jnp.int32),
            jnp.zeros((s,), jnp.int32),
            jnp.zeros((s,), jnp.float32),
            jnp.zeros((s,), bool),
        )
        # a buffer of its own for every array (empty caches share their zeros), as donation needs
        return jax.tree.map(lambda a: jnp.array(a, copy=True), state)

    def prefill(self, state: SlotState, slot, prompt_P, length, limits: GenerationLimits):
        """(new state, `Joined`); `state` is consumed (its buffers donated)."""
        return self._prefill(self.params, state, slot, prompt_P, length, limits, self.worst_DxE)

    def step(self, state: SlotState, threshold_S=None, expert_cap_S=None):
        """(new state, `Made` per slot); `state` is consumed. `threshold_S`, `expert_cap_S`: a
        server's degradation for this step, per slot (each slot runs at the looser of it and
        its request's own; None: none)."""
        threshold_S, expert_cap_S = step_inputs(self.slots, self.max_experts, threshold_S, expert_cap_S)
        return self._step(self.params, state, threshold_S, expert_cap_S, self.worst_DxE)

    def leave(self, state: SlotState, slot) -> SlotState:
        """The sequence in `slot` stops generating (its slot is then free to prefill into)."""
        return state._replace(active_S=self._leave(state.active_S, slot))

    # -- traced -------------------------------------------------------------------------------

    def prefill_fn(self, params, state: SlotState, slot, prompt_P, length, limits: GenerationLimits, worst_DxE):
        """`limits`: one request's (arrays of one row)."""
        self.traces["prefill"] += 1
        model = nnx.merge(self.graphdef, params)
        capacity = self.prompt_capacity
        limits = clipped(limits, self.new_capacity, self.blocks, self.max_experts)
        slot = jnp.clip(slot, 0, self.slots - 1)
        length = jnp.clip(length, 1, capacity)
        prompt_1xP = jnp.clip(prompt_P, 0, model.embed.num_embeddings - 1)[None]
        pacer = Pacer(self.flops, worst_DxE, limits, self.max_experts, False)
        fresh = lm_decode.empty_cache(model, 1, capacity + self.new_capacity)
        positions_1xP = jnp.arange(capacity, dtype=jnp.int32)[None]
        valid_1xP = positions_1xP < length
        logits, row_caches, spend = lm_decode.cached_forward(
            model, fresh, prompt_1xP, positions_1xP, valid_1xP, pacer.token_limits
        )
        flops_1xP, layers_1xP, experts_1xP = pacer.priced(spend, valid_1xP)
        last = length - 1
        first = pacer.draw(logits[:, last], jnp.zeros((1,), jnp.int32))
        stop = pacer.first_stop(first)

        def put(a, row):
            return a.at[slot].set(row[0])

        caches = tuple(
            KVCache(*(put(a, r) for a, r in zip(cache, row, strict=True)))
            for cache, row in zip(state.caches, row_caches, strict=True)
        )
        state = SlotState(
            caches,
            GenerationLimits(*(put(a, r) for a, r in zip(state.limits, limits, strict=True))),
            put(state.last_S, first),
            state.position_S.at[slot].set(length),
            state.count_S.at[slot].set(1),
            put(state.remaining_S, limits.flops_budget_B),
            put(state.active_S, stop == 0),
        )
        experts = jnp.broadcast_to(experts_1xP, (1, capacity))[0, last]
        joined = Joined(first[0], stop[0], layers_1xP[0, last], experts, flops_1xP.sum())
        return state, joined

    def step_fn(self, params, state: SlotState, threshold_S, expert_cap_S, worst_DxE):
        self.traces["step"] += 1
        model = nnx.merge(self.graphdef, params)
        threshold_S = jnp.where(jnp.isnan(threshold_S), NO_EXITS, threshold_S)  # NaN: no degradation
        limits = state.limits._replace(
            threshold_B=jnp.minimum(state.limits.threshold_B, threshold_S),
            expert_cap_B=jnp.clip(jnp.minimum(state.limits.expert_cap_B, expert_cap_S), 1, self.max_experts),
        )
        pacer = Pacer(self.flops, worst_DxE, limits, self.max_experts, self.compact)
        made, caches = pacer.step(
            model, state.caches, state.last_S, state.position_S, state.count_S, state.active_S, state.remaining_S
        )
        valid = made.valid_B
        state = SlotState(
            caches,
            state.limits,
            jnp.where(valid, made.token_B, state.last_S),
            state.position_S + valid,
            state.count_S + valid,
            state.remaining_S - made.flops_B,
            state.active_S & (made.stop_B == 0),
        )
        return state, made


def step_inputs(slots: int, max_experts: int, threshold_S=None, expert_cap_S=None):
    """A step's per-slot degradation inputs, as arrays; where not given, ones that change nothing."""
    if threshold_S is None:
        threshold_S = np.full((slots,), NO_EXITS, np.float32)
    if expert_cap_S is None:
        expert_cap_S = np.full((slots,), max_experts, np.int32)
    return np.asarray(threshold_S, np.float32), np.asarray(expert_cap_S, np.int32)


LIMIT_DTYPES = (
    jnp.int32,
    jnp.int32,
    jnp.int32,
    jnp.float32,
    jnp.float32,
    jnp.float32,
    jnp.float32,
    jnp.float32,
    jnp.uint32,
    bool,
)

__all__ = ["Joined", "Made", "SlotDecoder", "SlotState"]
