"""Budgeted prediction: one compiled function, the step budget a runtime input, inputs checked.

`BudgetedPredictor(graphdef, params, input_shape, cap)` compiles `infer(params, x, budget)`
once per batch size; changing the budget never recompiles (it is a traced int32 array).
Requests are checked on the host before they reach the compiled function: a wrong shape, a
non-finite value, an empty batch or a budget outside [1, cap] is a one-line ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class BudgetedPredictor:
    def __init__(self, graphdef: nnx.GraphDef, params: dict, input_shape: tuple[int, ...], cap: int):
        self.params, self.input_shape, self.cap = params, tuple(input_shape), cap
        self._infer = jax.jit(lambda p, x, b: nnx.merge(graphdef, p).infer(x, b))

    def check(self, x: np.ndarray, budget) -> tuple[np.ndarray, np.ndarray]:
        """Validates a request; returns (x as float32, per-example int32 budgets)."""
        x = np.asarray(x)
        if x.ndim == 0 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"inputs must have shape [batch, {', '.join(map(str, self.input_shape))}]; got {list(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("empty batch: send at least one example")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"inputs must be real numbers; got dtype {x.dtype}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
            raise ValueError(f"inputs contain NaN or Inf in {bad} of {len(x)} examples")
        budget = np.broadcast_to(np.asarray(budget), (x.shape[0],))
        if not np.issubdtype(budget.dtype, np.integer) and not np.all(np.mod(budget, 1) == 0):
            raise ValueError(f"step budget must be a whole number of steps; got {budget.tolist()[:4]}")
        if budget.min() < 1 or budget.max() > self.cap:
            raise ValueError(f"step budget must be in [1, {self.cap}]; got {budget.min()}..{budget.max()}")
        return x.astype(np.float32), budget.astype(np.int32)

    def __call__(self, x, budget=None):
        """(logits [B, C], steps used [B]) for a batch under per-example or one shared budget."""
        x, budget = self.check(x, self.cap if budget is None else budget)
        out = self._infer(self.params, jnp.asarray(x), jnp.asarray(budget))
        return out.logits_BxC, out.steps_B
