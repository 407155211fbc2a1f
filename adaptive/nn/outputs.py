"""What a depth model returns: training's forward pass, inference, and a full trajectory."""

from __future__ import annotations

from typing import NamedTuple

import jax


class ModelOutput(NamedTuple):
    """What training reads. Per-step fields are None for policies that do not use them."""

    logits_BxC: jax.Array  # the prediction scored for accuracy
    steps_B: jax.Array  # float32: steps of compute per example (expected, for PonderNet)
    ponder_B: jax.Array  # differentiable compute: ACT's N + R, PonderNet's E[steps]
    step_logits_NxBxC: jax.Array | None = None  # PonderNet / early exit: each step's prediction
    step_weights_NxB: jax.Array | None = None  # PonderNet: halting distribution; exits: uniform
    aux_loss: jax.Array | float = 0.0  # MoE load-balancing and z-losses, mean over steps
    metrics: dict | None = None  # MoE routing metrics (moe/...), mean over steps
    experts_B: jax.Array | None = None  # MoE: expert applications per example over the steps run
    expert_ponder_B: jax.Array | None = None  # the same, differentiable through top-p routing


class Inference(NamedTuple):
    logits_BxC: jax.Array
    steps_B: jax.Array  # int32: blocks applied to each example, <= min(budget, max_steps)
    experts_B: jax.Array | None = None  # int32: expert applications per example (MoE models)


class Trajectory(NamedTuple):
    """Every step's state, halting logit and prediction, up to the cap (training, evaluation)."""

    states_NxBx_xD: jax.Array
    halt_logits_NxH: jax.Array | None
    logits_NxBxC: jax.Array | None  # None for ACT, which reads out the weighted state instead
    aux_N: jax.Array | None = None  # MoE aux loss of each step
    moe_metrics: dict | None = None  # MoE metrics of each step
    experts_NxB: jax.Array | None = None  # MoE: expert applications per example at each step
    soft_experts_NxB: jax.Array | None = None  # the same, differentiable (top-p routing)
