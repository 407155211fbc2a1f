"""Model assembly from a ModelConfig.

Every model maps a batch of inputs to a `ModelOutput`: the logits, and the computation each
example used (`steps`, in blocks applied). Static models use the same number for every example;
adaptive models (halting, experts) report what they actually spent, which is what budgets,
penalties and compute-aware evaluation read.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn.blocks import MLPBlock, RNNCell


class ModelOutput(NamedTuple):
    logits_BxC: jax.Array
    steps_B: jax.Array  # computation used per example, in blocks (float32)


class ModelSpec(Protocol):
    """What a model needs to know about its data (see `adaptive.data.DatasetSpec`)."""

    input_shape: tuple[int, ...]
    num_classes: int


class MLP(nnx.Module):
    """`depth` hidden ReLU layers then a linear classifier."""

    def __init__(self, d_in: int, hidden: int, depth: int, num_classes: int, *, rngs: nnx.Rngs):
        dims = [d_in] + [hidden] * depth
        self.blocks = nnx.List([MLPBlock(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)])
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x_BxD: jax.Array) -> ModelOutput:
        h = x_BxD
        for block in self.blocks:
            h = block(h)
        return ModelOutput(self.head(h), jnp.full(x_BxD.shape[:1], len(self.blocks), jnp.float32))


class FixedStepRNN(nnx.Module):
    """The static baseline for ACT: the same cell run for exactly `depth` steps."""

    def __init__(self, d_in: int, hidden: int, depth: int, num_classes: int, *, rngs: nnx.Rngs):
        self.cell = RNNCell(d_in, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.depth = depth

    def __call__(self, x_BxD: jax.Array) -> ModelOutput:
        h = self.cell.initial_state(x_BxD.shape[0])
        for t in range(self.depth):
            h = self.cell(h, x_BxD, t == 0)
        return ModelOutput(self.head(h), jnp.full(x_BxD.shape[:1], self.depth, jnp.float32))


def build_model(cfg, spec: ModelSpec, *, seed: int) -> nnx.Module:
    """The model named by `cfg.kind` (a ModelConfig), sized for the data in `spec`."""
    d_in = 1
    for n in spec.input_shape:
        d_in *= n
    rngs = nnx.Rngs(params=jax.random.key(seed))
    families = {"mlp": MLP, "rnn": FixedStepRNN}
    return families[cfg.kind](d_in, cfg.hidden, cfg.depth, spec.num_classes, rngs=rngs)
