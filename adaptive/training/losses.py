"""Task losses and compute penalties for every depth policy.

none        cross-entropy of the output
act         cross-entropy of the mean-field output + tau * mean(N + R)   (Graves 2016)
pondernet   sum_t p_t CE(y_t) + beta * KL(p || Geometric(lambda_p))     (Banino 2021)
early_exit  mean over exits of CE(y_t)  (every exit is trained to be a good classifier)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification(logits_BxC: jax.Array, labels_B: jax.Array, mask_B: jax.Array | None = None):
    """Mean cross-entropy and accuracy over the examples where `mask_B` is 1."""
    mask_B = jnp.ones(labels_B.shape, jnp.float32) if mask_B is None else mask_B
    denom = jnp.maximum(mask_B.sum(), 1.0)
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    correct_B = (jnp.argmax(logits_BxC, -1) == labels_B).astype(jnp.float32)
    return (xent_B * mask_B).sum() / denom, (correct_B * mask_B).sum() / denom


def geometric_prior(n: int, lambda_p: float) -> jax.Array:
    """Geometric(lambda_p) over steps 1..n, renormalised to sum to 1 on that range."""
    t = jnp.arange(n, dtype=jnp.float32)
    p = lambda_p * (1.0 - lambda_p) ** t
    return p / p.sum()


def total_loss(out, labels_B: jax.Array, policy: str, cfg, budget=None, multiplier=0.0):
    """The training objective of `policy` (with HaltingConfig `cfg`) and the metrics it reports."""
    _, accuracy = classification(out.logits_BxC, labels_B)
    if policy in ("none", "act"):
        task, _ = classification(out.logits_BxC, labels_B)
        loss = task + (cfg.tau * out.ponder_B.mean() if policy == "act" else 0.0)
    else:
        n = out.step_logits_NxBxC.shape[0]
        xent_NxB = optax.softmax_cross_entropy_with_integer_labels(
            out.step_logits_NxBxC, jnp.broadcast_to(labels_B, (n,) + labels_B.shape)
        )
        task = (out.step_weights_NxB * xent_NxB).sum(0).mean()
        loss = task
        if policy == "pondernet":
            prior = geometric_prior(n, cfg.lambda_p)[:, None]
            p = out.step_weights_NxB
            kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, 1e-30)) - jnp.log(prior)), 0.0), 0)
            loss = task + cfg.beta * kl.mean()
    loss = loss + out.aux_loss  # MoE load-balancing and router z-losses (0 without experts)
    extra = {}
    if budget is not None and budget.target is not None:
        # The gradient reaches the halting distribution through expected compute (ACT's N + R,
        # PonderNet's E[steps]) and top-p routers through their expert counts; the multiplier's
        # dual ascent reads realized compute.
        expected = budget.compute(out.ponder_B, out.expert_ponder_B)
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
