"""Task losses and compute penalties: the halting policy supplies its own terms.

    none        cross-entropy of the output
    act         cross-entropy of the mean-field output + tau * mean(N + R)   (Graves 2016)
    pondernet   sum_t p_t CE(y_t) + beta * KL(p || Geometric(lambda_p))     (Banino 2021)
    early_exit  mean over exits of CE(y_t)  (every exit is trained to be a good classifier)

(`Policy.task_loss` and `Policy.loss_term` in adaptive.nn.policies; this module adds the MoE
auxiliary losses and the budget penalty, which every policy shares.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adaptive.nn.halting import geometric_prior
from adaptive.nn.policies import get_policy

__all__ = ["classification", "geometric_prior", "total_loss"]


def classification(logits_BxC: jax.Array, labels_B: jax.Array, mask_B: jax.Array | None = None):
    """Mean cross-entropy and accuracy over the examples where `mask_B` is 1."""
    mask_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B
    denom = jnp.maximum(mask_B.sum(), 1.0)
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
    return (xent_B * mask_B).sum() / denom, (correct_B * mask_B).sum() / denom


def total_loss(out, labels_B: jax.Array, policy: str, cfg, budget=None, multiplier=0.0):
    """The training objective of `policy` (with HaltingConfig `cfg`) and the metrics it reports."""
    _, accuracy = classification(out.logits_BxC, labels_B)
    rule = get_policy(policy)(cfg)
    task = rule.task_loss(out, labels_B)
    loss = task + rule.loss_term(out)
    loss = loss + out.aux_loss  # MoE load-balancing and router z-losses (0 without experts)
    extra = {}
    if budget is not None and budget.target is not None:
        # The gradient reaches the halting distribution through expected compute (ACT's N + R,
        # PonderNet's E[steps]) and top-p routers through their expert counts; the multiplier's
        # dual ascent reads realized compute.
        expected = budget.compute(out.ponder_B, out.expert_ponder_B if budget.routes_experts else None)
        realized = budget.compute(out.steps_B, out.experts_B)
        loss = loss + budget.penalty_term(expected, multiplier)
        extra = {
            "budget/expected_compute": expected.mean(),
            "budget/realized_compute": realized.mean(),
            "budget/target": jnp.float32(budget.target),
            "budget/lagrange_multiplier": jnp.float32(multiplier),
        }
    metrics = {
        "loss": loss,
        "task_loss": task,
        "accuracy": accuracy,
        "steps_mean": out.steps_B.mean(),
        "ponder_mean": out.ponder_B.mean(),
        **(out.metrics or {}),  # moe/... routing metrics
        **extra,  # budget/...
    }
    return loss, metrics
