"""One budgeted token of generation: the limits a sequence carries, the FLOPs pacing, pricing,
sampling and stopping, shared by the whole-generation loop (adaptive.inference.generate) and
the slot decoder a server steps (adaptive.inference.slots).

The FLOPs budget is a hard cap, paced: before each step a sequence's allowance is its remaining
budget over the tokens it may still generate (at least the cheapest token's cost, at most what
remains), and the step runs with the deepest layer cap whose worst-case cost (every block it
may reach run, its experts at their cap, the key/value writes above) fits the allowance. A
sequence that cannot pay for one more token at depth 1 stops ("budget").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adaptive.compute.lm_flops import LMFlops
from adaptive.data.byte_vocab import EOS
from adaptive.nn import lm_decode

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


class Made(NamedTuple):
    """What one decode step made for each sequence (B arrays)."""

    token_B: jax.Array  # int32 (meaningful where valid)
    valid_B: jax.Array  # bool: a token was made (the sequence was running and could pay for it)
    layers_B: jax.Array  # float32: blocks run for it
    experts_B: jax.Array  # float32: expert applications for it
    flops_B: jax.Array  # float32: its FLOPs (0 where not valid)
    stop_B: jax.Array  # int32: the sequence stopped at this step (index into STOP_REASONS), else 0


class Pacer:
    """The per-token rules of one batch of sequences under `limits` (clipped to their ranges by
    the caller); traced, inside the generation's or the server step's graph."""

    def __init__(self, flops: LMFlops, worst_DxE, limits: GenerationLimits, max_experts: int, compact: bool):
        self.flops, self.worst_DxE, self.limits, self.compact = flops, worst_DxE, limits, compact
        self.keys_B = jax.vmap(jax.random.key)(limits.seed_B)
        self.token_limits = lm_decode.TokenLimits(
            limits.threshold_B, limits.layer_cap_B, limits.expert_cap_B, limits.mod_bias_B
        )
        self.experts_idx = jnp.clip(limits.expert_cap_B, 1, max_experts) - 1
        self.cheapest_B = worst_DxE[0, self.experts_idx]

    def priced(self, spend: lm_decode.TokenSpend, valid):
        """(FLOPs, blocks run, expert applications) of each token, zero where not valid."""
        flops = self.flops.of_tokens(spend.reached_NxBxT, spend.ran_NxBxT, spend.experts_NxBxT)
        experts = 0.0 if spend.experts_NxBxT is None else spend.experts_NxBxT.sum(0)
        return flops * valid, spend.ran_NxBxT.sum(0), experts * valid

    def draw(self, logits_BxV, t_B) -> jax.Array:
        """Each sequence's token number t (its own key, folded with t)."""
        keys = jax.vmap(jax.random.fold_in)(self.keys_B, t_B.astype(jnp.uint32))
        return sample(logits_BxV, self.limits.temperature_B, self.limits.top_p_B, keys)

    def ends(self, token_B) -> jax.Array:
        return (token_B == EOS) & ~self.limits.ignore_eos_B

    def first_stop(self, first_B) -> jax.Array:
        """The stop reason after the first token (the prefill's): EOS, or the only token allowed."""
        stop = jnp.where(self.ends(first_B), 1, jnp.where(self.limits.max_new_tokens_B <= 1, 2, 0))
        return stop.astype(jnp.int32)

    def step(self, model, caches, last_B, position_B, t_B, active_B, remaining_B) -> tuple[Made, tuple]:
        """Token number t_B (>= 1) of each active sequence from its last token at position_B,
        within its remaining FLOPs budget: (what was made, the caches with it written)."""
        limits = self.limits
        left = jnp.maximum(limits.max_new_tokens_B - t_B, 1).astype(jnp.float32)
        allowance = jnp.minimum(jnp.maximum(remaining_B / left, self.cheapest_B), remaining_B)
        affordable = (self.worst_DxE[:, self.experts_idx] <= allowance[None, :]).sum(0)  # deepest cap that fits
        broke = active_B & (affordable == 0)
        valid = active_B & ~broke
        capped = self.token_limits._replace(layer_cap_B=jnp.minimum(limits.layer_cap_B, jnp.maximum(affordable, 1)))
        logits, caches, spend = lm_decode.cached_forward(
            model, caches, last_B[:, None], position_B[:, None], valid[:, None], capped, compact=self.compact
        )
        flops, layers, experts = self.priced(spend, valid[:, None])
        token = self.draw(logits[:, 0], t_B)
        stop = jnp.where(broke, 3, 0)
        stop = jnp.where(valid & self.ends(token), 1, stop)
        stop = jnp.where(valid & ~self.ends(token) & (t_B + 1 >= limits.max_new_tokens_B), 2, stop)
        experts_B = jnp.broadcast_to(experts, layers.shape)[:, 0]
        return Made(token, valid, layers[:, 0], experts_B, flops[:, 0], stop.astype(jnp.int32)), caches


def clipped(limits: GenerationLimits, new: int, blocks: int, experts: int) -> GenerationLimits:
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


def checked_limits(
    batch: int,
    new_capacity: int,
    blocks: int,
    max_experts: int,
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
    """Limits for `batch` sequences, each a scalar for every sequence or one value per sequence,
    refused in one line when out of range; None is the loosest (every new token the capacity
    has, every block, the router's k, no FLOPs budget, never exiting)."""

    def column(name, value, dtype, lo, hi, default):
        given = default if value is None else value
        if isinstance(given, int) and not isinstance(given, bool) and abs(given) >= 2**1024:
            given = math.inf if given > 0 else -math.inf  # past float64's range: refused below as out of range
        try:  # checked in float64 before the cast, which would wrap or truncate what it cannot hold
            wide = np.broadcast_to(np.asarray(given, np.float64), (batch,))
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name} must be a number or {batch} numbers, got {given!r:.60}") from None
        whole = np.issubdtype(dtype, np.integer) or dtype is bool
        if whole and not (np.isnan(wide) | (wide == np.round(wide))).all():
            raise ValueError(f"{name} must be a whole number, got {wide[wide != np.round(wide)][0]:g}")
        bad = ~((wide >= lo) & (wide <= hi))  # NaN fails too
        if bad.any():
            shown = wide[bad][0]
            raise ValueError(f"{name}={int(shown) if whole and np.isfinite(shown) else shown} is outside [{lo}, {hi}]")
        with np.errstate(over="ignore"):  # past float32's range is +-inf, which means the same limit
            return jnp.asarray(wide.astype(dtype))

    m = new_capacity
    return GenerationLimits(
        column("max_new_tokens", max_new_tokens, np.int32, 1, m, m),
        column("layer_cap", layer_cap, np.int32, 1, blocks, blocks),
        column("expert_cap", expert_cap, np.int32, 1, max_experts, max_experts),
        column("flops_budget", flops_budget, np.float32, 1e-30, np.inf, NO_BUDGET),
        column("threshold", threshold, np.float32, 0.0, np.inf, NO_EXITS),
        column("mod_bias", mod_bias, np.float32, -np.inf, np.inf, 0.0),
        column("temperature", temperature, np.float32, 0.0, 1e4, 0.0),
        column("top_p", top_p, np.float32, 1e-6, 1.0, 1.0),
        column("seed", seed, np.uint32, 0, 2**32 - 1, 0),
        column("ignore_eos", ignore_eos, bool, False, True, False),
    )
