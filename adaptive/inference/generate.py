"""Generation under budgets: prefill, then a KV-cached decode loop compiled once.

`Decoder` compiles, for a static prompt capacity P and new-token capacity M, one function that
prefills a batch of prompts (right-padded to P) and decodes up to M tokens in a `lax.while_loop`
(adaptive.nn.lm_decode runs each token). Every budget is a runtime input, one value per
sequence, so no request recompiles: the most new tokens, the per-token layer cap, the expert
cap, the exit threshold, the MoD bias, sampling (temperature 0 is greedy; top-p) with a seed
per sequence, and a FLOPs budget for the whole generation.

The FLOPs budget covers the decode steps, the tokens after the first; the prompt's prefill
(which yields the first token) is priced and reported apart, as serving meters prompt and
generated tokens apart. It is a hard cap, paced: before each step a sequence's allowance is its
remaining budget over the tokens it may still generate (at least the cheapest token's cost, at
most what remains), and the step runs with the deepest layer cap whose worst-case cost (every
block it may reach run, its experts at their cap, the key/value writes above) fits the
allowance. A sequence that cannot pay for one more token at depth 1 stops ("budget").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.compute.lm_flops import LMFlops, lm_flops
from adaptive.data.byte_vocab import EOS
from adaptive.nn import lm_decode
from adaptive.nn.moe import limit_experts

STOP_REASONS = ("running", "eos", "max_new_tokens", "budget")
NO_BUDGET = float("inf")
NO_EXITS = 2.0  # a threshold above every confidence


class GenerationLimits(NamedTuple):
    """Per sequence (B arrays); `Decoder.limits` builds and checks them."""

    max_new_tokens_B: jax.Array  # int32, 1..M
    layer_cap_B: jax.Array  # int32, 1..blocks
    expert_cap_B: jax.Array  # int32, >= 1
    flops_budget_B: jax.Array  # float32, > 0 (inf: none), for the tokens after the first
    threshold_B: jax.Array  # float32: exit when the confidence reaches it (> 1: never)
    mod_bias_B: jax.Array  # float32: a MoD block runs for a token whose predictor exceeds it
    temperature_B: jax.Array  # float32, >= 0; 0 is greedy
    top_p_B: jax.Array  # float32 in (0, 1]
    seed_B: jax.Array  # uint32: the sequence's sampling key
    ignore_eos_B: jax.Array  # bool: go on past EOS (benchmarks: every sequence runs to its length)


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


def sample(logits_BxV, temperature_B, top_p_B, keys_B) -> jax.Array:
    """A token per row: the argmax at temperature 0, else a draw from the softmax at that
    temperature restricted to the smallest set of tokens whose probability reaches top_p. The
    draw (and the sort top-p needs) runs only when some row asks for it."""
    logits = logits_BxV.astype(jnp.float32)
    greedy = logits.argmax(-1).astype(jnp.int32)

    def draw():
        scaled = logits / jnp.maximum(temperature_B, 1e-6)[:, None]

        def nucleus():
            probs = jax.nn.softmax(scaled, -1)
            sorted_probs = -jnp.sort(-probs, -1)
            before = jnp.cumsum(sorted_probs, -1) - sorted_probs  # mass of the tokens ranked above
            kept = before < top_p_B[:, None]  # the first token always
            smallest = jnp.min(jnp.where(kept, sorted_probs, jnp.inf), -1, keepdims=True)
            return jnp.where(probs >= smallest, scaled, -jnp.inf)

        masked = jax.lax.cond((top_p_B < 1).any(), nucleus, lambda: scaled)
        drawn = jax.vmap(jax.random.categorical)(keys_B, masked).astype(jnp.int32)
        return jnp.where(temperature_B > 0, drawn, greedy)

    return jax.lax.cond((temperature_B > 0).any(), draw, lambda: greedy)


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
        if prompt_capacity < 1 or new_capacity < 1:
            raise ValueError(f"prompt_capacity={prompt_capacity} and new_capacity={new_capacity} must be >= 1")
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
        # rounded up, so that float32 pricing in the loop never finds a token dearer than its cap
        self.worst_DxE = jnp.asarray(worst_costs(flops, self.blocks, self.max_experts) * (1 + 1e-5), jnp.float32)
        self.traces = 0  # how often the generation was traced (compiled): once per batch size
        self._compiled = jax.jit(self.generate)

    def limits(
        self,
        batch: int,
        *,
        max_new_tokens=None,
        layer_cap=None,
        expert_cap=None,
        flops_budget=None,
        threshold=None,
        mod_bias=0.0,
        temperature=0.0,
        top_p=1.0,
        seed=0,
        ignore_eos=False,
    ) -> GenerationLimits:
        """Checked limits, each a scalar for every sequence or one value per sequence; None is
        the loosest (M tokens, every block, the router's k, no FLOPs budget, never exiting)."""

        def column(name, value, dtype, lo, hi, default):
            value = np.broadcast_to(np.asarray(default if value is None else value, dtype), (batch,))
            bad = ~((value >= lo) & (value <= hi))  # NaN fails too
            if bad.any():
                raise ValueError(f"{name}={value[bad][0]} is outside [{lo}, {hi}]")
            return jnp.asarray(value)

        m = self.new_capacity
        return GenerationLimits(
            column("max_new_tokens", max_new_tokens, np.int32, 1, m, m),
            column("layer_cap", layer_cap, np.int32, 1, self.blocks, self.blocks),
            column("expert_cap", expert_cap, np.int32, 1, 1 << 20, self.max_experts),
            column("flops_budget", flops_budget, np.float32, 1e-30, np.inf, NO_BUDGET),
            column("threshold", threshold, np.float32, 0.0, np.inf, NO_EXITS),
            column("mod_bias", mod_bias, np.float32, -np.inf, np.inf, 0.0),
            column("temperature", temperature, np.float32, 0.0, 1e4, 0.0),
            column("top_p", top_p, np.float32, 1e-6, 1.0, 1.0),
            column("seed", seed, np.uint32, 0, 2**32 - 1, 0),
            column("ignore_eos", ignore_eos, bool, False, True, False),
        )

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
        limits = _clipped(limits, self.new_capacity, self.blocks, self.max_experts)
        new = self.new_capacity
        rows = jnp.arange(batch)
        keys_B = jax.vmap(lambda s: jax.random.key(s))(limits.seed_B)
        token_limits = lm_decode.TokenLimits(
            limits.threshold_B, limits.layer_cap_B, limits.expert_cap_B, limits.mod_bias_B
        )

        def priced(spend, valid):
            flops = self.flops.of_tokens(spend.reached_NxBxT, spend.ran_NxBxT, spend.experts_NxBxT)
            experts = 0.0 if spend.experts_NxBxT is None else spend.experts_NxBxT.sum(0)
            return flops * valid, spend.ran_NxBxT.sum(0), experts * valid

        def draw(logits_BxV, t):
            keys = jax.vmap(jax.random.fold_in, (0, None))(keys_B, t)
            return sample(logits_BxV, limits.temperature_B, limits.top_p_B, keys)

        def ends(token_B):
            return (token_B == EOS) & ~limits.ignore_eos_B

        # prefill: the prompt, whose last position yields the first token
        caches = lm_decode.empty_cache(model, batch, capacity + new)
        positions_BxP = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (batch, capacity))
        valid_BxP = positions_BxP < length_B[:, None]
        logits, caches, spend = lm_decode.cached_forward(
            model, caches, prompt_BxP, positions_BxP, valid_BxP, token_limits
        )
        flops_BxP, layers_BxP, experts_BxP = priced(spend, valid_BxP)
        last = length_B - 1
        first = draw(logits[rows, last], 0)
        zeros = jnp.zeros((batch, new), jnp.float32)
        out = Generation(
            jnp.zeros((batch, new), jnp.int32).at[:, 0].set(first),
            jnp.ones((batch,), jnp.int32),
            zeros.at[:, 0].set(layers_BxP[rows, last]),
            zeros.at[:, 0].set(jnp.broadcast_to(experts_BxP, (batch, capacity))[rows, last]),
            zeros.at[:, 0].set(flops_BxP[rows, last]),
            flops_BxP.sum(-1),
            jnp.where(ends(first), 1, jnp.where(limits.max_new_tokens_B <= 1, 2, 0)).astype(jnp.int32),
        )
        experts_idx = jnp.clip(limits.expert_cap_B, 1, self.max_experts) - 1
        cheapest_B = worst_DxE[0, experts_idx]

        def running(carry):
            t, _, out, _ = carry
            return (t < new) & (out.stop_B == 0).any()

        def step(carry):
            t, caches, out, remaining_B = carry
            active = out.stop_B == 0
            left = jnp.maximum(limits.max_new_tokens_B - t, 1).astype(jnp.float32)
            allowance = jnp.minimum(jnp.maximum(remaining_B / left, cheapest_B), remaining_B)
            affordable = (worst_DxE[:, experts_idx] <= allowance[None, :]).sum(0)  # deepest cap that fits
            broke = active & (affordable == 0)
            valid = active & ~broke
            capped = token_limits._replace(layer_cap_B=jnp.minimum(limits.layer_cap_B, jnp.maximum(affordable, 1)))
            position = length_B + t - 1
            logits, caches, spend = lm_decode.cached_forward(
                model,
                caches,
                out.tokens_BxM[:, t - 1][:, None],
                position[:, None],
                valid[:, None],
                capped,
                compact=self.compact,
            )
            flops, layers, experts = priced(spend, valid[:, None])
            token = draw(logits[:, 0], t)

            def put(a, v):
                return a.at[:, t].set(jnp.where(valid, v, a[:, t]))

            stop = jnp.where(broke, 3, out.stop_B)
            stop = jnp.where(valid & ends(token), 1, stop)
            stop = jnp.where(valid & ~ends(token) & (t + 1 >= limits.max_new_tokens_B), 2, stop)
            out = Generation(
                put(out.tokens_BxM, token),
                out.count_B + valid,
                put(out.layers_BxM, layers[:, 0]),
                put(out.experts_BxM, jnp.broadcast_to(experts, (batch, 1))[:, 0]),
                put(out.flops_BxM, flops[:, 0]),
                out.prefill_flops_B,
                stop,
            )
            return t + 1, caches, out, remaining_B - flops[:, 0]

        carry = (jnp.int32(1), caches, out, limits.flops_budget_B)
        _, _, out, _ = jax.lax.while_loop(running, step, carry)
        return out


def _clipped(limits: GenerationLimits, new: int, blocks: int, experts: int) -> GenerationLimits:
    def finite(x, fallback):
        return jnp.where(jnp.isnan(x), fallback, x)

    return GenerationLimits(
        jnp.clip(limits.max_new_tokens_B, 1, new),
        jnp.clip(limits.layer_cap_B, 1, blocks),
        jnp.clip(limits.expert_cap_B, 1, experts),
        jnp.maximum(finite(limits.flops_budget_B, 0.0), 0.0),
        finite(limits.threshold_B, NO_EXITS),
        finite(limits.mod_bias_B, 0.0),
        jnp.clip(finite(limits.temperature_B, 0.0), 0.0, 1e4),
        jnp.clip(finite(limits.top_p_B, 1.0), 1e-6, 1.0),
        limits.seed_B,
        limits.ignore_eos_B,
    )


def decoder_for_run(run, *, prompt_capacity: int, new_capacity: int) -> Decoder:
    """A `Decoder` of a trained language model's run (adaptive.inference.restore.load_run with
    language_model=True), its tokens priced at a cache of prompt + new slots."""
    if run.cfg.model.kind != "lm":
        kind = run.cfg.model.kind
        raise ValueError(f"{run.workdir} holds a classifier (model.kind={kind!r}); generation needs a language model")
    size = prompt_capacity + new_capacity
    flops = lm_flops(run.cfg, size, run.spec.num_classes, exiting=True, decoding=True)
    # one device, each call's tokens routed as one group (a decode step has as many as rows)
    graphdef, params = nnx.split(limit_experts(nnx.merge(run.graphdef, run.params), None), nnx.Param)
    return Decoder(graphdef, params, flops, prompt_capacity=prompt_capacity, new_capacity=new_capacity)


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
