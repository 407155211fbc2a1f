"""A language model's compute per token as decoding will spend it, read off a training pass.

Training runs every block for every token (CALM's loss needs every exit; MoD blocks run their
top-k), but a budget is about what inference spends: a token leaves at the first exit whose
confidence reaches `lm.exit_threshold`, a MoD block runs for the tokens its causal predictor
picks, a top-p router gives a token the experts it asks for. This module replays those
decisions on the training pass's exit scores, predictor logits and expert counts, twice:

Each decision is the hard one in the forward pass (so the penalty and the multiplier's dual
ascent both see the compute decoding would spend) with the gradient of a smooth surrogate
(straight-through, as top-p routers count experts): an exit is taken with probability
sigmoid(logit(score) - logit(threshold)) (the odds ratio: unlike a sharp sigmoid around the
threshold, its slope does not vanish for a confidence far below it, as every exit's is at
initialisation), a MoD block runs with probability sigmoid(predictor logit), ACT's steps carry
the gradient of its ponder N + R.

So the penalty pushes exit confidences up (or down), the MoD predictors to pick fewer (or more)
tokens and top-p routers to ask for fewer (or more) experts, until decoding's FLOPs per token
meet the target. (State propagation makes decoding's exit scores differ a little from training's;
evaluation reports the FLOPs decoding really spent.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive.compute.budget import Budget
from adaptive.nn.lm import LMOutput

EPSILON = 1e-6  # keeps logit(score) finite at confidences (and thresholds) of 0 and 1


def _straight_through(hard, soft):
    """`hard`'s value with `soft`'s gradient."""
    return hard + soft - jax.lax.stop_gradient(soft)


def _logit(p):
    p = jnp.clip(p, EPSILON, 1.0 - EPSILON)
    return jnp.log(p) - jnp.log1p(-p)


def _reached(leave_ExBxL: jax.Array) -> jax.Array:
    """Block by block, 1 - (the probability the token left at an earlier exit): N x B x L."""
    stay = jnp.cumprod(1.0 - leave_ExBxL, axis=0)
    return jnp.concatenate([jnp.ones_like(stay[:1]), stay])


def decoding_compute(out: LMOutput, budget: Budget, exit_threshold: float | None, mod_layers: tuple[int, ...]):
    """Compute per token (B x L) in `budget`'s unit as decoding would spend it, differentiable
    through the surrogates; `exit_threshold` None when the model has no exits."""
    reached = jnp.ones_like(out.ran_NxBxL)
    if exit_threshold is not None and out.exit_scores_ExBxL is not None:
        scores = out.exit_scores_ExBxL.astype(jnp.float32)
        odds = jax.nn.sigmoid(_logit(scores) - _logit(jnp.float32(exit_threshold)))
        reached = _reached(_straight_through((scores >= exit_threshold).astype(jnp.float32), odds))
    runs = jnp.ones_like(out.ran_NxBxL)
    for m, layer in enumerate(mod_layers):  # the causal predictor's choice, as decoding routes
        logits = out.mod_logits_MxBxL[m].astype(jnp.float32)
        runs = runs.at[layer].set(_straight_through((logits > 0).astype(jnp.float32), jax.nn.sigmoid(logits)))
    ran = reached * runs
    if out.ponder_BxL is not None:  # ACT: the steps run, with the gradient of N + R spread over them
        ran = out.ran_NxBxL + (out.ponder_BxL - jax.lax.stop_gradient(out.ponder_BxL)) / ran.shape[0]
        reached = ran
    experts = None
    if out.experts_NxBxL is not None:
        # as requested (dropless decoding runs each), with the top-p router's surrogate gradient;
        # a MoD block's tokens outside its top-k have no count in training: priced at the most
        most = budget.tokens.experts_per_block if budget.tokens is not None else 0.0
        experts = jnp.where(out.ran_NxBxL > 0, out.soft_experts_NxBxL, most) * ran
    return budget.of_tokens(reached, ran, experts)


def budget_terms(out: LMOutput, budget: Budget, multiplier, exit_threshold, mod_layers) -> tuple[jax.Array, dict]:
    """(the penalty to add to the loss, the budget/... metrics)."""
    compute = decoding_compute(out, budget, exit_threshold, mod_layers)
    penalty = budget.penalty_term(compute, multiplier)
    realized = jax.lax.stop_gradient(compute).mean()
    return penalty, {
        "budget/expected_compute": realized,  # the same value: its gradient is the surrogates'
        "budget/realized_compute": realized,
        "budget/target": jnp.float32(budget.target),
        "budget/lagrange_multiplier": jnp.float32(multiplier),
    }
