"""Mixture-of-experts routing as pure functions: who goes to which expert, in which slot.

A routing is a list of (token, expert, slot, gate) assignments with static shapes. Dispatch
(moe.py) then moves each kept token to row `expert * capacity + slot` of a buffer, so no
tokens x experts x capacity one-hot tensor is ever built.

- Top-k token choice (Switch, GShard): each token picks its k most probable experts. When an
  expert is over capacity, assignments are kept in priority order: every token's first choice
  before any second choice, and within a choice rank the higher score first. With
  `priority="top1"` (batch-prioritised routing, Riquelme et al. 2021, as V-MoE's
  `batch_priority`) a token's score is its top-1 probability for all its choices, so a confident
  token keeps its later choices ahead of a hesitant one; with `priority="own"` each choice is
  ranked by its own probability. Dropped assignments get gate 0 and the token passes through
  the residual.
- Top-p (dynamic k; Huang et al. 2024, "Harder tasks need more experts"): each token takes
  experts in order of probability until their mass reaches p, at most k. How many experts a
  token uses is then the router's own confidence, which a compute budget can train: the count
  gets a differentiable surrogate (`Routing.soft_experts_T`).
- Expert choice (Zhou et al. 2022): each expert takes its `capacity` most probable tokens;
  nothing is dropped by construction, and a token may get 0..E experts.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    token_A: jax.Array  # int32: which token each assignment moves
    expert_A: jax.Array  # int32: to which expert
    slot_A: jax.Array  # int32: its row in that expert's buffer, in [0, capacity) when kept
    gate_A: jax.Array  # float: its weight when combining outputs (0 when dropped)
    kept_A: jax.Array  # bool: dispatched (active and within capacity)
    active_A: jax.Array  # bool: requested (False for choices beyond a per-request k budget)
    probs_TxE: jax.Array  # the router's softmax, for aux losses and metrics
    soft_experts_T: jax.Array | None = None  # top-p: experts per token, with a gradient to the router


def capacity(num_tokens, num_experts: int, k: int, factor: float):
    """Slots per expert: factor x the expert's share of the k * T assignments (at least 1).

    Integer arithmetic on the factor as a fraction, so that `num_tokens` may be a symbolic
    dimension (an exported artifact's batch) and the capacity a symbolic expression of it.
    """
    ratio = Fraction(factor).limit_denominator(1000)
    slots = -(-(num_tokens * k * ratio.numerator) // (num_experts * ratio.denominator))
    return max(1, slots) if isinstance(slots, int) else slots  # symbolic: >= 1 for any batch


PRIORITIES = ("top1", "own")


def top_k(
    logits_TxE: jax.Array,
    k: int,
    cap: int,
    *,
    renormalize: bool,
    k_active: jax.Array | None = None,
    priority: str = "top1",
) -> Routing:
    """Top-k token-choice routing with prioritised dropping past `cap` slots per expert.

    `k_active` (traced, 1..k) switches off choices j >= k_active: they are never dispatched.
    `priority` ranks choices for the slots (module docstring): "top1" or "own".
    """
    probs = jax.nn.softmax(logits_TxE.astype(jnp.float32), axis=-1)
    gate_TxK, expert_TxK = jax.lax.top_k(probs, k)
    active_TxK = jnp.ones_like(gate_TxK, bool)
    return _assign(probs, gate_TxK, expert_TxK, active_TxK, cap, renormalize, k_active, priority)


def top_p(
    logits_TxE: jax.Array,
    k: int,
    p: float,
    cap: int,
    *,
    renormalize: bool,
    k_active=None,
    temperature: float = 0.05,
    priority: str = "top1",
) -> Routing:
    """Top-p routing: a token's j-th choice is used when its first j - 1 choices hold less than
    `p` of its probability (the first always is), up to k choices.

    `soft_experts_T` is the realized count in the forward pass with the gradient of
    1 + sum_j sigmoid((p - mass before choice j) / temperature): lowering it asks the router to
    be more confident, which is how a compute budget reaches the number of experts.
    """
    probs = jax.nn.softmax(logits_TxE.astype(jnp.float32), axis=-1)
    gate_TxK, expert_TxK = jax.lax.top_k(probs, k)
    mass_before_TxK = jnp.cumsum(gate_TxK, -1) - gate_TxK
    first = jnp.arange(k)[None, :] == 0
    active_TxK = first | (mass_before_TxK < p)
    if k_active is not None:
        active_TxK &= jnp.arange(k)[None, :] < k_active
    soft = jnp.where(first, 1.0, jax.nn.sigmoid((p - mass_before_TxK) / temperature)).sum(-1)
    hard = active_TxK.sum(-1).astype(jnp.float32)
    routing = _assign(probs, gate_TxK, expert_TxK, active_TxK, cap, renormalize, k_active, priority)
    return routing._replace(soft_experts_T=hard + soft - jax.lax.stop_gradient(soft))


def _assign(probs, gate_TxK, expert_TxK, active_TxK, cap: int, renormalize: bool, k_active, priority) -> Routing:
    """Slots for the chosen (token, expert) pairs in priority order; `k_active` (traced, 1..k)
    switches off choices j >= k_active, which are then never dispatched."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {PRIORITIES}")
    (num_tokens, k), num_experts = gate_TxK.shape, probs.shape[-1]
    if k_active is not None:
        active_TxK = active_TxK & (jnp.arange(k)[None, :] < k_active)
    # Order: choice rank first (all first choices before second ones), then the score, highest
    # first, ties by token index (the sort is stable). The score is the router's probability
    # before any renormalisation (which can round ties apart): the token's top-1 probability for
    # every choice ("top1"), or the choice's own ("own").
    score_TxK = jnp.broadcast_to(gate_TxK[:, :1], gate_TxK.shape) if priority == "top1" else gate_TxK
    rank_KxT = jnp.broadcast_to(jnp.arange(k)[:, None], (k, num_tokens))
    order = jnp.lexsort((-score_TxK.T.reshape(-1), rank_KxT.reshape(-1)))  # last key is primary
    if renormalize:
        masked = jnp.where(active_TxK, gate_TxK, 0.0)
        gate_TxK = masked / jnp.maximum(masked.sum(-1, keepdims=True), 1e-9)
    expert_A = expert_TxK.T.reshape(-1)
    active_A = active_TxK.T.reshape(-1)
    slot_A = _slots_in_order(expert_A, active_A, order, num_experts)
    # With room for every token (dropless), keeping does not depend on the slots, so a dispatch
    # that does not read them (blocks) lets XLA drop the priority sort altogether.
    kept_A = active_A if _at_least(cap, num_tokens) else active_A & (slot_A < cap)
    token_A = jnp.tile(jnp.arange(num_tokens, dtype=jnp.int32), k)
    gate_A = jnp.where(kept_A, gate_TxK.T.reshape(-1), 0.0)
    return Routing(token_A, expert_A.astype(jnp.int32), slot_A, gate_A, kept_A, active_A, probs)


def _at_least(a, b) -> bool:
    """a >= b for sizes that may be symbolic (an exported batch); False when undecidable."""
    try:
        return bool(a >= b)
    except Exception:  # jax.export's InconclusiveDimensionOperation: some batch sizes say no
        return False


def _slots_in_order(expert_A: jax.Array, active_A: jax.Array, order: jax.Array, num_experts: int) -> jax.Array:
    """Each assignment's position among the active assignments to its expert, in `order`.

    A cumulative count over an assignments x experts table (A x E, small), not a one-hot over
    capacity.
    """
    sorted_onehot = jax.nn.one_hot(expert_A[order], num_experts, dtype=jnp.int32) * active_A[order, None]
    position_sorted = jnp.take_along_axis(jnp.cumsum(sorted_onehot, 0) - 1, expert_A[order][:, None], 1)[:, 0]
    big = jnp.iinfo(jnp.int32).max
    position_sorted = jnp.where(active_A[order], position_sorted, big)
    return jnp.zeros_like(expert_A, jnp.int32).at[order].set(position_sorted)


def expert_choice(logits_TxE: jax.Array, cap: int, k_active=None) -> Routing:
    """Each expert takes its `cap` most probable tokens (probabilities over experts per token).

    Experts choose, so a token may be taken by any number of them (training leaves it so). An
    expert budget caps each token at its highest-gated experts, the rest of its assignments
    dropped (their slots stay empty), so that the budget holds for any input, the model's own
    `k` included: `k_active` (traced, a scalar or one per token, T x 1; None: uncapped)."""
    num_tokens, num_experts = logits_TxE.shape
    probs = jax.nn.softmax(logits_TxE.astype(jnp.float32), axis=-1)
    gate_ExC, token_ExC = jax.lax.top_k(probs.T, min(cap, num_tokens))
    c = gate_ExC.shape[1]
    expert_A = jnp.repeat(jnp.arange(num_experts, dtype=jnp.int32), c)
    slot_A = jnp.tile(jnp.arange(c, dtype=jnp.int32), num_experts)
    token_A, gate_A = token_ExC.reshape(-1).astype(jnp.int32), gate_ExC.reshape(-1)
    kept = jnp.ones(num_experts * c, bool)
    if k_active is not None:
        budget = jnp.asarray(k_active)
        budget_A = budget.reshape(-1)[token_A] if budget.ndim else budget  # each assignment's token's
        kept = _rank_within_token(token_A, gate_A) < budget_A
        gate_A = jnp.where(kept, gate_A, 0.0)
    return Routing(token_A, expert_A, slot_A, gate_A, kept, kept, probs)


def _rank_within_token(token_A: jax.Array, gate_A: jax.Array) -> jax.Array:
    """Each assignment's place among its token's assignments, highest gate first (0, 1, ...):
    a sort by (token, -gate), then each position less the start of its token's run."""
    order = jnp.lexsort((-gate_A, token_A))
    sorted_token = token_A[order]
    index = jnp.arange(token_A.shape[0], dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones((1,), bool), sorted_token[1:] != sorted_token[:-1]])
    rank_sorted = index - jax.lax.cummax(jnp.where(starts, index, 0))
    return jnp.zeros_like(index).at[order].set(rank_sorted)


# -- aux losses and metrics ---------------------------------------------------------------------


def load_balancing_loss(routing: Routing, num_experts: int) -> jax.Array:
    """Switch Transformer's E * sum_e f_e * P_e: f_e the share of tokens whose first choice is
    expert e (before capacity), P_e its mean router probability. 1 under uniform routing."""
    num_tokens = routing.probs_TxE.shape[0]
    first = slice(0, num_tokens)  # assignments are laid out choice-major: the first T are top-1
    counts = jnp.zeros(num_experts).at[routing.expert_A[first]].add(1.0)
    fraction = counts / num_tokens
    return num_experts * jnp.sum(fraction * routing.probs_TxE.mean(0))


def router_z_loss(logits_TxE: jax.Array) -> jax.Array:
    """ST-MoE's mean squared log-partition: keeps router logits small and routing stable."""
    return jnp.mean(jax.nn.logsumexp(logits_TxE.astype(jnp.float32), axis=-1) ** 2)


def routing_metrics(routing: Routing, num_experts: int) -> dict[str, jax.Array]:
    """moe/experts_per_token (requested), moe/drop_fraction, moe/expert_usage (per expert: its
    share of kept assignments), moe/gate_mass (per expert: its mean router probability),
    moe/usage_entropy, moe/router_confidence."""
    kept = routing.kept_A.astype(jnp.float32)
    usage = jnp.zeros(num_experts).at[routing.expert_A].add(kept)
    share = usage / jnp.maximum(usage.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.maximum(share, 1e-30)), 0.0))
    requested = jnp.maximum(routing.active_A.sum(), 1)
    return {
        "moe/experts_per_token": routing.active_A.sum() / routing.probs_TxE.shape[0],
        "moe/drop_fraction": 1.0 - kept.sum() / requested,
        "moe/expert_usage": share,
        "moe/gate_mass": routing.probs_TxE.mean(0),
        "moe/usage_entropy": entropy,
        "moe/router_confidence": routing.probs_TxE.max(-1).mean(),
    }
