"""The math of depth controllers: when to stop applying blocks, as pure functions of per-step signals.

The policies themselves (adaptive.nn.policies, one file each) call these functions. A model runs
its blocks step by step and exposes, per step t = 1..N, a halting signal (a logit, or the step's
own prediction for early exit). A policy turns those signals into *halting weights* over steps:
how much of the output each step contributes, and the step at which each element stops.

    policy      signal            weights                             output
    act         sigmoid(logit)    p_t until the sum reaches 1-eps,    sum_t w_t h_t (mean-field
                                  then the remainder R                state, Graves 2016)
    pondernet   sigmoid(logit)    p_t = lambda_t prod_{j<t}(1-l_j)    training: expectation of
                                                                      the loss; inference: the
                                                                      halting step's output
    early_exit  conf(logits_t)    one-hot at the first confident step the exit's own output

`limit` (per element, 1 <= limit <= N) forces a halt at that step: it is both the hard cap and
the per-request budget, and the remaining halting mass goes to the last step run.

Each rule is written twice on purpose: `*_weights` computes the weights of a whole trajectory
at once (training, which runs every step under `lax.scan` because reverse-mode gradients do not
pass `lax.while_loop`; and evaluation at many budgets from one pass), and `*_update` advances the
same rule by one step inside inference's `lax.while_loop`, which stops when every element has
halted. Tests check that both give the same result.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

CONFIDENCES = ("max_prob", "margin", "neg_entropy")


def step_numbers(n: int, like: jax.Array) -> jax.Array:
    """[n, 1, ..., 1] holding 1..n, to broadcast against a [n, ...] per-step array."""
    return jnp.arange(1, n + 1, dtype=jnp.int32).reshape((n,) + (1,) * (like.ndim - 1))


def _first_true(mask_NxH: jax.Array) -> jax.Array:
    """1-based index of the first True along axis 0 (the caller guarantees there is one)."""
    return jnp.argmax(mask_NxH, axis=0).astype(jnp.int32) + 1


class Halting(NamedTuple):
    """Weights over the N steps of a trajectory, and where each element halted."""

    weights_NxH: jax.Array  # sums to 1 over steps for every element
    steps_H: jax.Array  # int32: the step at which each element halted (1..limit)
    ponder_H: jax.Array  # differentiable compute: ACT's N + R; expected steps for PonderNet


# -- whole trajectories (training, evaluation at many budgets) ---------------------------------


def act_weights(halt_prob_NxH: jax.Array, limit_H: jax.Array, eps: float) -> Halting:
    """Graves' ACT: halt at the first step where the probability mass reaches 1 - eps."""
    n = halt_prob_NxH.shape[0]
    t = step_numbers(n, halt_prob_NxH)
    cum_before = jnp.cumsum(halt_prob_NxH, axis=0) - halt_prob_NxH
    halts_here = (cum_before + halt_prob_NxH >= 1.0 - eps) | (t >= limit_H)
    steps = _first_true(halts_here)
    remainder = 1.0 - jnp.take_along_axis(cum_before, (steps - 1)[None], axis=0)[0]
    weights = jnp.where(t < steps, halt_prob_NxH, jnp.where(t == steps, remainder, 0.0))
    return Halting(weights, steps, steps.astype(jnp.float32) + remainder)


def pondernet_weights(halt_prob_NxH: jax.Array, limit_H: jax.Array) -> Halting:
    """PonderNet: p_t = lambda_t prod_{j<t}(1 - lambda_j), with lambda = 1 at the limit."""
    n = halt_prob_NxH.shape[0]
    t = step_numbers(n, halt_prob_NxH)
    lam = jnp.where(t >= limit_H, 1.0, halt_prob_NxH)
    # The exclusive product prod_{j<t}(1 - lambda_j), without dividing by (1 - lambda_t) -> 0.
    survive_before = jnp.concatenate([jnp.ones_like(lam[:1]), jnp.cumprod(1.0 - lam, axis=0)[:-1]], 0)
    weights = jnp.where(t <= limit_H, lam * survive_before, 0.0)
    # Training runs every step up to the limit; what it *expects* to need is the ponder figure.
    ran = jnp.broadcast_to(jnp.minimum(limit_H, n), weights.shape[1:]).astype(jnp.int32)
    return Halting(weights, ran, (weights * t).sum(0))


def geometric_prior(n: int, lambda_p: float) -> jax.Array:
    """Geometric(lambda_p) over steps 1..n, renormalised to sum to 1 on that range (PonderNet's prior)."""
    t = jnp.arange(n, dtype=jnp.float32)
    p = lambda_p * (1.0 - lambda_p) ** t
    return p / p.sum()


def pondernet_halt_step(weights_NxH: jax.Array, limit_H: jax.Array, threshold: float) -> jax.Array:
    """Deterministic PonderNet inference: the first step whose cumulative probability >= threshold."""
    t = step_numbers(weights_NxH.shape[0], weights_NxH)
    return _first_true((jnp.cumsum(weights_NxH, 0) >= threshold) | (t >= limit_H))


def confidence(logits_BxC: jax.Array, kind: str) -> jax.Array:
    """How sure a prediction is, higher = surer: max softmax, top-2 margin or minus entropy."""
    probs = jax.nn.softmax(logits_BxC, -1)
    if kind == "max_prob":
        return probs.max(-1)
    if kind == "margin":
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
    if kind == "neg_entropy":
        return (probs * jax.nn.log_softmax(logits_BxC, -1)).sum(-1)
    raise ValueError(f"confidence {kind!r} is not one of {CONFIDENCES}")


def exit_halt_step(confidence_NxB: jax.Array, limit_B: jax.Array, threshold: float) -> jax.Array:
    """Early exit: the first step whose prediction is confident enough, or the limit."""
    t = step_numbers(confidence_NxB.shape[0], confidence_NxB)
    return _first_true((confidence_NxB >= threshold) | (t >= limit_B))


# -- one step at a time (inference under lax.while_loop) ---------------------------------------


class Running(NamedTuple):
    """Per-element bookkeeping carried through inference's while_loop."""

    halted_H: jax.Array  # bool
    steps_H: jax.Array  # int32: steps applied so far
    mass_H: jax.Array  # float: cumulative halting mass (ACT/PonderNet) or 0


def start(shape: tuple[int, ...]) -> Running:
    return Running(jnp.zeros(shape, bool), jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.float32))


def act_update(run: Running, t: jax.Array, halt_prob_H: jax.Array, limit_H: jax.Array, eps: float):
    """One ACT step: returns (new bookkeeping, this step's weight per element)."""
    active = ~run.halted_H
    halts_now = active & ((run.mass_H + halt_prob_H >= 1.0 - eps) | (t >= limit_H))
    weight = jnp.where(halts_now, 1.0 - run.mass_H, jnp.where(active, halt_prob_H, 0.0))
    return _advance(run, active, halts_now, run.mass_H + weight), weight


def pondernet_update(run: Running, t, halt_prob_H, limit_H, threshold: float):
    """One thresholded PonderNet step; `mass_H` is the cumulative halting probability so far."""
    active = ~run.halted_H
    lam = jnp.where(t >= limit_H, 1.0, halt_prob_H)
    p = lam * (1.0 - run.mass_H)  # 1 - mass so far = prod_{j<t}(1 - lambda_j)
    mass = run.mass_H + jnp.where(active, p, 0.0)
    halts_now = active & ((mass >= threshold) | (t >= limit_H))
    return _advance(run, active, halts_now, mass), halts_now


def pondernet_sample_update(run: Running, t, halt_prob_H, limit_H, key: jax.Array):
    """One sampled PonderNet step: halt with probability lambda_t (or at the limit)."""
    active = ~run.halted_H
    coin = jax.random.bernoulli(key, halt_prob_H)
    halts_now = active & (coin | (t >= limit_H))
    return _advance(run, active, halts_now, run.mass_H), halts_now


def exit_update(run: Running, t, confidence_B, limit_B, threshold: float):
    active = ~run.halted_H
    halts_now = active & ((confidence_B >= threshold) | (t >= limit_B))
    return _advance(run, active, halts_now, run.mass_H), halts_now


def _advance(run: Running, active, halts_now, mass) -> Running:
    return Running(run.halted_H | halts_now, run.steps_H + active.astype(jnp.int32), mass)
