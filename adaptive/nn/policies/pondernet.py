"""`pondernet`: Banino et al.'s PonderNet (2021).

A halting unit gives lambda_t per step; p_t = lambda_t prod_{j<t}(1 - lambda_j) is the halting
distribution. Training takes the expectation of every step's loss under p and adds
beta * KL(p || Geometric(lambda_p)); inference halts at the first step whose cumulative p
reaches a threshold, or, as the paper evaluates, on a coin with probability lambda_t at each step
(`pondernet_inference = sample`); either way it halts at the step budget at the latest. Sampled
coins come from one key per example (see adaptive.inference.infer.example_keys), folded with the
step, so an example's halting step does not depend on the batch it is in. On a sequence the unit
reads the state averaged over positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adaptive.nn import halting as H
from adaptive.nn.outputs import ModelOutput, Trajectory
from adaptive.nn.policies.base import Policy, expected_step_loss, unit_logit


class PonderNet(Policy):
    name = "pondernet"
    halt_unit = True

    def halt_logit(self, unit, h, sequence: bool) -> jax.Array:
        if sequence:
            h = h.mean(axis=1)
        return unit_logit(unit, h)

    def samples(self) -> bool:
        return self.cfg.pondernet_inference == "sample"

    def combine(self, model, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        halting = H.pondernet_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit_B)
        logits = (halting.weights_NxH[..., None] * traj.logits_NxBxC).sum(0)
        return ModelOutput(logits, halting.ponder_H, halting.ponder_H, traj.logits_NxBxC, halting.weights_NxH)

    def infer_step(self, model, run: H.Running, t, h, acc, limit, key):
        logits = model.readout(h, t)
        lam = jax.nn.sigmoid(model.halt_logit(h))
        if self.samples():
            keys = key if key.shape else jax.random.split(key, lam.shape[0])  # one key per example
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
            limit = jnp.broadcast_to(limit, lam.shape)
            update = jax.vmap(H.pondernet_sample_update, (0, None, 0, 0, 0))
            run, now = update(run, t, lam, limit, step_keys)
        else:
            run, now = H.pondernet_update(run, t, lam, limit, self.cfg.pondernet_threshold)
        return run, jnp.where(now[:, None], logits, acc)

    def halt_steps(self, traj: Trajectory, limit_B: jax.Array) -> jax.Array:
        if self.samples():
            raise ValueError("sampled PonderNet halting has no trajectory equivalent")
        weights = H.pondernet_weights(jax.nn.sigmoid(traj.halt_logits_NxH), limit_B).weights_NxH
        return H.pondernet_halt_step(weights, limit_B, self.cfg.pondernet_threshold)

    def task_loss(self, out: ModelOutput, labels_B: jax.Array) -> jax.Array:
        return expected_step_loss(out, labels_B)

    def loss_term(self, out: ModelOutput) -> jax.Array:
        p = out.step_weights_NxB
        prior = H.geometric_prior(p.shape[0], self.cfg.lambda_p)[:, None]
        kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, 1e-30)) - jnp.log(prior)), 0.0), 0)
        return self.cfg.beta * kl.mean()

    def halting_flops(self, *, unit: float, readout: float, num_classes: int, positions: int, sequence: bool) -> float:
        return unit + readout  # the halting unit, and every step's readout
