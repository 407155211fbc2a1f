"""`early_exit`: confidence-based exits (MSDNet, CALM style).

Every step has a prediction (its own head unless the block is shared); inference exits at the
first step whose confidence reaches `exit_threshold`. Training gives every exit the same weight,
so each is trained to be a good classifier.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive.nn import halting as H
from adaptive.nn.outputs import ModelOutput, Trajectory
from adaptive.nn.policies.base import Policy, expected_step_loss, last_step_output


class EarlyExit(Policy):
    name = "early_exit"

    def per_step_heads(self, shared: bool) -> bool:
        return not shared

    def combine(self, model, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        return last_step_output(traj, limit_B)

    def step_reductions(self, num_classes: int) -> tuple[int, ...]:
        return (num_classes,)  # the confidence: a softmax over the classes

    def infer_step(self, model, run: H.Running, t, h, acc, limit, key):
        logits = model.readout(h, t)
        conf = H.confidence(logits, self.cfg.confidence)
        run, now = H.exit_update(run, t, conf, limit, self.cfg.exit_threshold)
        return run, jnp.where(now[:, None], logits, acc)

    def halt_steps(self, traj: Trajectory, limit_B: jax.Array) -> jax.Array:
        conf = H.confidence(traj.logits_NxBxC, self.cfg.confidence)
        return H.exit_halt_step(conf, limit_B, self.cfg.exit_threshold)

    def task_loss(self, out: ModelOutput, labels_B: jax.Array) -> jax.Array:
        return expected_step_loss(out, labels_B)

    def halting_flops(self, *, unit: float, readout: float, num_classes: int, positions: int, sequence: bool) -> float:
        return readout + 4.0 * num_classes  # the exit's readout and its confidence
