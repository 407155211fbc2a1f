"""Task losses and the metrics that go with them (compute penalties join here later)."""

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
