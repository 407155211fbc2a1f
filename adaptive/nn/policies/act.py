"""`act`: Graves' Adaptive Computation Time (2016).

A halting unit gives p_t per step; an element halts once the mass reaches 1 - eps and the
output is the mean-field state sum_t w_t h_t, read out once. On a sequence every position halts
on its own and an example computes while any of its positions does. The objective adds
tau * mean(N + R), the ponder cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive.nn import halting as H
from adaptive.nn.outputs import Inference, ModelOutput, Trajectory
from adaptive.nn.policies.base import Policy, unit_logit


class ACT(Policy):
    name = "act"
    halt_unit = True
    step_logits = False  # reads out the weighted state instead of every step

    def per_position(self, sequence: bool) -> bool:
        return sequence

    def halt_logit(self, unit, h, sequence: bool) -> jax.Array:
        return unit_logit(unit, h)

    def combine(self, model, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        n = traj.states_NxBx_xD.shape[0]
        limit = limit_B[:, None] if model.sequence else limit_B
        halting = H.act_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit, self.cfg.eps)
        w = halting.weights_NxH[..., None]
        state = (w * traj.states_NxBx_xD).sum(0)
        steps, ponder = halting.steps_H, halting.ponder_H
        if model.sequence:  # an example computes while any of its positions does
            steps, ponder = steps.max(-1), ponder.mean(-1)
        return ModelOutput(model.readout(state, n), steps.astype(jnp.float32), ponder)

    def infer_init(self, h0: jax.Array, batch: int, num_classes: int) -> jax.Array:
        return jnp.zeros_like(h0)  # the mean-field state

    def infer_step(self, model, run: H.Running, t, h, acc, limit, key):
        run, w = H.act_update(run, t, jax.nn.sigmoid(model.halt_logit(h)), limit, self.cfg.eps)
        return run, acc + w[..., None] * h

    def infer_result(self, model, run: H.Running, acc: jax.Array):
        steps = run.steps_H.max(-1) if self.per_position(model.sequence) else run.steps_H
        return model.readout(acc, model.num_steps), steps

    def from_trajectory(self, model, traj: Trajectory, limit_B: jax.Array) -> Inference:
        out = self.combine(model, traj, limit_B)
        return Inference(out.logits_BxC, out.steps_B.astype(jnp.int32))

    def loss_term(self, out: ModelOutput) -> jax.Array:
        return self.cfg.tau * out.ponder_B.mean()

    def halting_flops(self, *, unit: float, readout: float, num_classes: int, positions: int, sequence: bool) -> float:
        # The halting unit, per position on a sequence. The mean-field update acc + w * h
        # (2 x state a step, about 1% of a step) is left out: the budget targets that committed
        # experiments were run at (configs/budget.py) are priced without it.
        return (positions if self.per_position(sequence) else 1) * unit
