"""The interface every halting policy implements, and the pieces several of them share.

A policy is a frozen dataclass over its HaltingConfig (hashable, so it sits in a model's static
graph). `DepthModel` runs the loops (an unrolled stack, `lax.scan` over the cap for training,
`lax.while_loop` for inference) and asks the policy at each point where the policies differ:

    structure     num_steps, per_step_heads, per_position, halt_unit, step_logits, unrolled,
                  reads_out_every_step
    training      halt_logit (the halting unit's reading of a state), combine (trajectory weights)
    inference     samples, infer_init, infer_step (one while_loop step), infer_result, from_trajectory
    objective     task_loss, loss_term (the policy's regulariser, added to the task loss)
    compute       halting_flops (what halting and per-step readouts cost, for adaptive.compute.flops)

The model object a policy receives offers `readout(h, t)`, `halt_logit(h)`, `num_steps` and
`sequence`; policies never look at the backbone's kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from adaptive.nn import halting as H
from adaptive.nn.outputs import Inference, ModelOutput, Trajectory


def unit_logit(unit, h: jax.Array) -> jax.Array:
    """A one-output linear unit's logit for every row of `h`, as a multiply and a sum over features.

    XLA:CPU rewrites a one-column matmul into a reduction whose bits for a row depend on how many
    rows share it, at every width; written out, it is a row reduction like a LayerNorm's, whose
    kernel changes only where in-batch compaction's smallest bucket already keeps every row
    (adaptive.nn.compaction)."""
    return (h * unit.kernel[...][:, 0]).sum(-1) + unit.bias[...][0]


@dataclass(frozen=True)
class Policy(ABC):
    cfg: Any  # the HaltingConfig

    name: ClassVar[str] = ""
    unrolled: ClassVar[bool] = False  # exactly num_steps steps, no halting: a static network
    halt_unit: ClassVar[bool] = False  # a learned unit reads the state at every step
    step_logits: ClassVar[bool] = True  # the trajectory keeps every step's prediction

    # -- structure ------------------------------------------------------------------------------

    @property
    def reads_out_every_step(self) -> bool:
        """Whether a prediction is read out after every step, in training and at inference (early
        exit, PonderNet), rather than once from the last or the mean-field state."""
        return self.step_logits and not self.unrolled

    def num_steps(self, model_cfg) -> int:
        """The steps the model is built for: the cap of an adaptive policy."""
        return self.cfg.max_steps

    def per_step_heads(self, shared: bool) -> bool:
        """Whether each step has its own output head (stacked on a leading axis)."""
        return False

    def per_position(self, sequence: bool) -> bool:
        """Whether each position of a sequence halts on its own (else each example does)."""
        return False

    def halt_logit(self, unit, h, sequence: bool) -> jax.Array:
        """The halting unit's logit for state `h` (policies with `halt_unit`)."""
        raise TypeError(f"policy {self.name!r} has no halting unit")

    def step_reductions(self, num_classes: int) -> tuple[int, ...]:
        """Elements per example of the reductions `infer_step` makes over a step's logits (what
        in-batch compaction must know, adaptive.nn.compaction)."""
        return ()

    # -- training -------------------------------------------------------------------------------

    @abstractmethod
    def combine(self, model, traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
        """The policy's weights over a trajectory, halting by `limit_B` at the latest."""

    # -- inference ------------------------------------------------------------------------------

    def samples(self) -> bool:
        """Whether inference draws its halting decisions at random: `infer_step` then gets one
        PRNG key per example (see adaptive.inference.infer.example_keys) instead of a single one."""
        return False

    def infer_init(self, h0: jax.Array, batch: int, num_classes: int) -> jax.Array:
        """The while_loop's accumulator: by default the halting step's logits."""
        return jnp.zeros((batch, num_classes), h0.dtype)

    def infer_step(self, model, run: H.Running, t, h, acc, limit, key) -> tuple[H.Running, jax.Array]:
        """One while_loop step after block t ran: (new bookkeeping, new accumulator). Unrolled
        (static) policies never run the while_loop and need not define it."""
        raise TypeError(f"policy {self.name!r} does not run the inference while_loop")

    def infer_result(self, model, run: H.Running, acc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, int32 steps per example) once the while_loop has stopped."""
        return acc, run.steps_H

    def halt_steps(self, traj: Trajectory, limit_B: jax.Array) -> jax.Array:
        """The step at which each example halts, read from a whole trajectory (the default
        `from_trajectory` uses it; a policy that overrides `from_trajectory` need not define it)."""
        raise TypeError(f"policy {self.name!r} reads its trajectory through from_trajectory")

    def from_trajectory(self, model, traj: Trajectory, limit_B: jax.Array) -> Inference:
        """What `infer_step` gives under `limit_B`, computed from a full trajectory instead."""
        steps = self.halt_steps(traj, limit_B)
        return Inference(pick_step(traj.logits_NxBxC, steps), steps)

    # -- objective and compute ------------------------------------------------------------------

    def task_loss(self, out: ModelOutput, labels_B: jax.Array) -> jax.Array:
        """Mean cross-entropy of the output (policies that weigh steps override it)."""
        return mean_cross_entropy(out.logits_BxC, labels_B)

    def loss_term(self, out: ModelOutput) -> jax.Array | float:
        """The policy's own term of the objective (ponder cost, prior), 0 without one."""
        return 0.0

    def halting_flops(self, *, unit: float, readout: float, num_classes: int, positions: int, sequence: bool) -> float:
        """FLOPs per example per step that halting adds: `unit` is one halting unit, `readout`
        one readout (a sequence's pooling and norm included), `positions` a sequence's length. A
        policy that `reads_out_every_step` counts its readouts here; the others' single readout
        is part of the fixed cost."""
        return 0.0


def mean_cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean cross-entropy over the batch (the same ops as training.losses.classification)."""
    mask_B = jnp.ones(labels_B.shape, jnp.float32)
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    return (xent_B * mask_B).sum() / jnp.maximum(mask_B.sum(), 1.0)


def expected_step_loss(out: ModelOutput, labels_B: jax.Array) -> jax.Array:
    """sum_t w_t CE(y_t), averaged over the batch: every step's prediction, weighted."""
    n = out.step_logits_NxBxC.shape[0]
    xent_NxB = optax.softmax_cross_entropy_with_integer_labels(
        out.step_logits_NxBxC, jnp.broadcast_to(labels_B, (n,) + labels_B.shape)
    )
    return (out.step_weights_NxB * xent_NxB).sum(0).mean()


def pick_step(logits_NxBxC: jax.Array, steps_B: jax.Array) -> jax.Array:
    """Each example's logits at its own (1-based) step."""
    return jnp.take_along_axis(logits_NxBxC, (steps_B - 1)[None, :, None], axis=0)[0]


def last_step_output(traj: Trajectory, limit_B: jax.Array) -> ModelOutput:
    """The output of the last step run, with uniform weights over the steps up to it."""
    n = traj.states_NxBx_xD.shape[0]
    steps = jnp.minimum(limit_B, n)
    weights = (H.step_numbers(n, traj.logits_NxBxC[..., 0]) <= steps).astype(jnp.float32) / steps
    last = pick_step(traj.logits_NxBxC, steps)
    steps = steps.astype(jnp.float32)
    return ModelOutput(last, steps, steps, traj.logits_NxBxC, weights)
