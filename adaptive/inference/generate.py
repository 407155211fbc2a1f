"""Generation under budgets: prefill, then a KV-cached decode loop compiled once.

`Decoder` compiles, for a static prompt capacity P and new-token capacity M, one function that
prefills a batch of prompts (right-padded to P) and decodes up to M tokens in a `lax.while_loop`
(adaptive.nn.lm_decode runs each token). Every budget is a runtime input, one value per
sequence, so no request recompiles: the most new tokens, the per-token layer cap, the expert
cap, the exit threshold, the MoD bias, sampling (temperature 0 is greedy; top-p) with a seed
per sequence, and a FLOPs budget for the whole generation.

The FLOPs budget covers the decode steps, the tokens after the first; the prompt's prefill
(which yields the first token) is priced and reported apart, as serving meters prompt and
generated tokens apart. It is a hard cap, paced token by token (adaptive.inference.token_step).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.compute.lm_flops import LMFlops, lm_flops
from adaptive.inference.token_step import (
    NO_EXITS,
    STOP_REASONS,
    GenerationLimits,
    Pacer,
    checked_limits,
    clipped,
    sample,
)
from adaptive.nn import lm_decode
from adaptive.nn.moe import limit_experts
from adaptive.nn.prune import shapes_of

__all__ = ["NO_EXITS", "STOP_REASONS", "Decoder", "Generation", "GenerationLimits", "decoder_for_run", "sample"]


class Generation(NamedTuple):
    """What each sequence generated and spent; per-token arrays are B x M, valid below count_B."""

    tokens_BxM: jax.Array  # int32; EOS included when it ended the sequence
    count_B: jax.Array  # int32: tokens generated
    layers_BxM: jax.Array  # float32: blocks run for the token (the first: the prompt's last position)
    experts_BxM: jax.Array  # float32: expert applications for it (0 without MoE)
    flops_BxM: jax.Array  # float32: FLOPs of the forward that produced it
    # float32: the prompt's prefill, first token included, priced as what each prompt token
    # needed (the blocks it reached and ran), like the full pass's FLOPs: a parallel prefill
    # also computes, and discards, blocks for tokens that exited or that MoD skipped
    prefill_flops_B: jax.Array
    stop_B: jax.Array  # int32: index into STOP_REASONS

    def decode_flops_B(self) -> jax.Array:
        """FLOPs the budget covers: the tokens after the first."""
        return self.flops_BxM[:, 1:].sum(-1)


class Decoder:
    """Budgeted generation for one language model, compiled once per (batch, P, M)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params,
        flops: LMFlops,
        *,
        prompt_capacity: int,
        new_capacity: int,
        compact: bool = True,
    ):
        for name, value in (("prompt_capacity", prompt_capacity), ("new_capacity", new_capacity)):
            if value < 1:  # named alone: the other may be fine
                raise ValueError(f"{name}={value} must be >= 1")
        self.graphdef, self.params, self.flops = graphdef, params, flops
        self.prompt_capacity, self.new_capacity, self.compact = prompt_capacity, new_capacity, compact
        model = nnx.merge(graphdef, params)
        self.blocks, self.vocab = model.num_layers, model.embed.num_embeddings
        moe = model.blocks[0].moe
        self.max_experts = moe.k if moe is not None else 1
        lm_decode.empty_cache(model, 1, 1)  # refuses models it cannot decode
        if model.position_embed is not None and prompt_capacity + new_capacity > model.max_length:
            total = prompt_capacity + new_capacity
            raise ValueError(f"{total} prompt and new tokens exceed the learned positions ({model.max_length})")
        self._cache_bytes, self._memory = cache_bytes(model, prompt_capacity + new_capacity), _device_memory()
        self._prefill_bytes = prefill_bytes(model, prompt_capacity, prompt_capacity + new_capacity)
        self.check_cache_fits(1)
        # rounded up, so that float32 pricing in the loop never finds a token dearer than its cap
        self.worst_DxE = jnp.asarray(worst_costs(flops, self.blocks, self.max_experts) * (1 + 1e-5), jnp.float32)
        self.traces = 0  # how often the generation was traced (compiled): once per batch size
        self._compiled = jax.jit(self.generate)

    def check_cache_fits(self, batch: int, prefilled: int | None = None) -> None:
        """Refuses `batch` sequences whose key/value caches, with the attention of `prefilled` of
        them prefilled at once (default: all), would take over half the device's memory."""
        _check_cache_fits(self._cache_bytes, batch, self._memory, self._prefill_bytes, prefilled)

    def limits(self, batch: int, **given) -> GenerationLimits:
        """Checked limits (`checked_limits`), each a scalar or one value per sequence."""
        self.check_cache_fits(batch)
        return checked_limits(batch, self.new_capacity, self.blocks, self.max_experts, **given)

    def __call__(self, prompts: list[np.ndarray], limits: GenerationLimits) -> Generation:
        """Generate for each prompt (int32 tokens, 1..P of them, each < vocab)."""
        if not prompts:
            raise ValueError("no prompts to generate from")
        batch, capacity = len(prompts), self.prompt_capacity
        padded = np.zeros((batch, capacity), np.int32)
        lengths = np.zeros((batch,), np.int32)
        for i, prompt in enumerate(prompts):
            prompt = np.asarray(prompt)
            if prompt.ndim != 1 or not 1 <= len(prompt) <= capacity:
                raise ValueError(f"prompt {i} has shape {prompt.shape}; a prompt is 1 to {capacity} tokens")
            if prompt.min() < 0 or prompt.max() >= self.vocab:
                raise ValueError(f"prompt {i} has tokens outside [0, {self.vocab})")
            padded[i, : len(prompt)], lengths[i] = prompt, len(prompt)
        if limits.max_new_tokens_B.shape != (batch,):
            raise ValueError(f"limits are for {limits.max_new_tokens_B.shape[0]} sequences, not {batch}")
        return self._compiled(self.params, jnp.asarray(padded), jnp.asarray(lengths), limits, self.worst_DxE)

    def generate(self, params, prompt_BxP, length_B, limits: GenerationLimits, worst_DxE) -> Generation:
        """The traceable generation (what `__call__` compiles and `adaptive export` serializes).
        The caps hold whatever the inputs: each limit is clipped to its range inside the graph
        (a NaN threshold never exits, a NaN budget pays for nothing past the first token)."""
        self.traces += 1
        model = nnx.merge(self.graphdef, params)
        batch, capacity = prompt_BxP.shape
        prompt_BxP = jnp.clip(prompt_BxP, 0, self.vocab - 1)
        length_B = jnp.clip(length_B, 1, capacity)
        limits = clipped(limits, self.new_capacity, self.blocks, self.max_experts)
        new = self.new_capacity
        rows = jnp.arange(batch)
        pacer = Pacer(self.flops, worst_DxE, limits, self.max_experts, self.compact)
        # prefill: the prompt, whose last position yields the first token
        caches = lm_decode.empty_cache(model, batch, capacity + new)
        positions_BxP = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (batch, capacity))
        valid_BxP = positions_BxP < length_B[:, None]
        logits, caches, spend = lm_decode.cached_forward(
            model, caches, prompt_BxP, positions_BxP, valid_BxP, pacer.token_limits
        )
        flops_BxP, layers_BxP, experts_BxP = pacer.priced(spend, valid_BxP)
        last = length_B - 1
        first = pacer.draw(logits[rows, last], jnp.zeros((batch,), jnp.int32))
        zeros = jnp.zeros((batch, new), jnp.float32)
        out = Generation(
            jnp.zeros((batch, new), jnp.int32).at[:, 0].set(first),
            jnp.ones((batch,), jnp.int32),
            zeros.at[:, 0].set(layers_BxP[rows, last]),
            zeros.at[:, 0].set(jnp.broadcast_to(experts_BxP, (batch, capacity))[rows, last]),
            zeros.at[:, 0].set(flops_BxP[rows, last]),
            flops_BxP.sum(-1),
            pacer.first_stop(first),
        )

        def running(carry):
            t, _, out, _ = carry
            return (t < new) & (out.stop_B == 0).any()

        def step(carry):
            t, caches, out, remaining_B = carry
            t_B = jnp.full((batch,), t)
            made, caches = pacer.step(
                model, caches, out.tokens_BxM[:, t - 1], length_B + t - 1, t_B, out.stop_B == 0, remaining_B
            )

            def put(a, v):
                return a.at[:, t].set(jnp.where(made.valid_B, v, a[:, t]))

            out = Generation(
                put(out.tokens_BxM, made.token_B),
                out.count_B + made.valid_B,
                put(out.layers_BxM, made.layers_B),
                put(out.experts_BxM, made.experts_B),
                put(out.flops_BxM, made.flops_B),
                out.prefill_flops_B,
                jnp.where(made.stop_B != 0, made.stop_B, out.stop_B),
            )
            return t + 1, caches, out, remaining_B - made.flops_B

        carry = (jnp.int32(1), caches, out, limits.flops_budget_B)
        _, _, out, _ = jax.lax.while_loop(running, step, carry)
        return out


def decoder_for_run(run, *, prompt_capacity: int, new_capacity: int) -> Decoder:
    """A `Decoder` of a trained language model's run (adaptive.inference.restore.load_run with
    language_model=True), its tokens priced at a cache of prompt + new slots."""
    if run.cfg.model.kind != "lm":
        kind = run.cfg.model.kind
        raise ValueError(f"{run.workdir} holds a classifier (model.kind={kind!r}); generation needs a language model")
    size = prompt_capacity + new_capacity
    model = nnx.merge(run.graphdef, run.params)
    cfg, widths = shapes_of(model).priced(run.cfg)  # as its shapes stand: a pruned model's are smaller
    flops = lm_flops(cfg, size, run.spec.num_classes, exiting=True, decoding=True, **widths)
    # one device, each call's tokens routed as one group (a decode step has as many as rows)
    graphdef, params = nnx.split(limit_experts(model, None), nnx.Param)
    return Decoder(graphdef, params, flops, prompt_capacity=prompt_capacity, new_capacity=new_capacity)


def cache_bytes(model, positions: int) -> int:
    """Bytes of one sequence's key/value cache over `positions` tokens, every block."""
    per_position = sum(
        2 * b.attention.heads * b.attention.head_width * jnp.dtype(b.attention.dtype).itemsize for b in model.blocks
    )
    return positions * per_position


def _device_memory() -> int:
    """Bytes of memory of the device: an accelerator's as JAX reports it, else this machine's."""
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def prefill_bytes(model, prompt: int, positions: int) -> int:
    """Bytes a prefill of one `prompt`-token sequence holds in its largest block's attention:
    scores, probabilities and one temporary of prompt x `positions` per head in float32, which
    grow with the square of the prompt (experiments/design_measurements.md: the peaks it was
    set against)."""
    return max(3 * b.attention.heads * prompt * positions * 4 for b in model.blocks)


def _check_cache_fits(per_sequence: int, batch: int, memory: int, prefill: int = 0, prefilled=None) -> None:
    """Refuses caches for `batch` sequences, with the prefill attention of `prefilled` of them
    (default: all), that would take more than half of the device's `memory`: XLA would fail to
    allocate them, or abort on the shape, mid-compilation."""
    cache, attention = per_sequence * batch, prefill * (batch if prefilled is None else prefilled)
    if cache + attention > memory / 2:
        raise ValueError(
            f"the key/value cache of {batch} sequence(s) takes {cache / 2**30:,.1f} GiB and their prompts' "
            f"attention at prefill {attention / 2**30:,.1f} GiB; the device has {memory / 2**30:,.1f} GiB: "
            "ask for a shorter prompt, fewer tokens or fewer sequences"
        )


def worst_costs(flops: LMFlops, blocks: int, max_experts: int) -> np.ndarray:
    """D x E: the most FLOPs a decoded token can cost under layer cap d + 1 and expert cap e + 1:
    every block it may reach run, each with that many experts, the blocks above filled."""
    table = np.zeros((blocks, max_experts), np.float64)
    for d in range(blocks):
        reached = (np.arange(blocks) <= d).astype(np.float64).reshape(blocks, 1, 1)
        for e in range(max_experts):
            experts = reached * min(e + 1, max(flops.experts_per_block, 1.0)) if flops.expert_pass else None
            table[d, e] = float(flops.of_tokens(reached, reached, experts)[0, 0])
    return table
