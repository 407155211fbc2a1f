"""`none`: a static network of exactly `model.depth` steps, unrolled, with no halting."""

from __future__ import annotations

import jax

from adaptive.nn.outputs import ModelOutput, Trajectory
from adaptive.nn.policies.base import Policy, last_step_output


class Static(Policy):
    name = "none"
    unrolled = True  # the model runs its steps unrolled and never asks for halting

    def num_steps(self, model_cfg) -> int:
        return model_cfg.depth

    def combine(self, model, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        return last_step_output(traj, limit_B)

    def halt_steps(self, traj: Trajectory, limit_B: jax.Array) -> jax.Array:
        raise ValueError("a static model has no trajectory; call it directly")
