"""Budgeted prediction: the step budget a runtime input, the expert budget an executable, inputs checked.

`BudgetedPredictor(graphdef, params, input_shape, cap)` compiles the one budgeted inference
function (infer.py) once per batch size; changing the step budget never recompiles (it is a
traced int32 array). For a MoE model (`k_max` = its moe.k) there is one executable per expert
budget k = 1..k_max, each sized for its k: compiled per k it saves the compute it promises
(as a traced argument a smaller k saves most of it with block dispatch, nothing with capacity
buffers sized for k_max: `adaptive bench moe`). Requests are checked on the host before they reach a
compiled function: a wrong shape, a non-finite value, an empty batch, or a budget out of range
is a one-line ValueError. A model that samples its halting steps (PonderNet with
`pondernet_inference = sample`) keys each example's coins on its own input, so a request gets the
same answer whatever it is batched with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.inference.infer import budgeted_infer


class BudgetedPredictor:
    def __init__(
        self, graphdef: nnx.GraphDef, params: dict, input_shape: tuple[int, ...], cap: int, k_max: int | None = None
    ):
        self.params, self.input_shape, self.cap, self.k_max = params, tuple(input_shape), cap, k_max
        self._infer_by_k = {k: jax.jit(budgeted_infer(graphdef, k)) for k in range(1, (k_max or 0) + 1)}
        self._infer = self._infer_by_k.get(k_max) or jax.jit(budgeted_infer(graphdef, None))

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
        # Checked after the cast: a float64 past float32's range is Inf in the model. The cast's own
        # overflow warning is silenced, since the refusal below names the problem.
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
            raise ValueError(f"inputs contain NaN or Inf in {bad} of {len(x)} examples")
        given = np.asarray(budget)
        if given.dtype == bool or not (
            np.issubdtype(given.dtype, np.integer) or np.issubdtype(given.dtype, np.floating)
        ):
            raise ValueError(f"step budget must be a whole number of steps; got {given.tolist()!r:.60}")
        if given.ndim > 1 or given.size not in (1, len(x)):
            raise ValueError(
                f"step budget must be one number or one per example ({len(x)}); got shape {list(given.shape)}"
            )
        budget = np.broadcast_to(given.reshape(-1), (x.shape[0],))
        if not np.all(np.isfinite(budget) & (np.mod(budget, 1) == 0)):
            raise ValueError(f"step budget must be a whole number of steps; got {budget.tolist()[:4]}")
        if budget.min() < 1 or budget.max() > self.cap:
            raise ValueError(f"step budget must be in [1, {self.cap}]; got {budget.min()}..{budget.max()}")
        return x, budget.astype(np.int32)

    def __call__(self, x, budget=None, experts: int | None = None):
        """(logits [B, C], steps used [B]); see `predict`."""
        out = self.predict(x, budget, experts)
        return out.logits_BxC, out.steps_B

    def predict(self, x, budget=None, experts: int | None = None):
        """The model's `Inference` (logits, steps used and, for MoE models, expert applications
        per example) under a step budget (per example or shared) and an expert budget per token
        for the whole batch (MoE models; default k_max)."""
        x, budget = self.check(x, self.cap if budget is None else budget)
        infer = self._infer
        if experts is not None:
            if not self.k_max:
                raise ValueError("an expert budget needs a model with experts (moe.enabled)")
            if not isinstance(experts, (int, np.integer)) or not 1 <= experts <= self.k_max:
                raise ValueError(f"expert budget must be a whole number in [1, {self.k_max}]; got {experts!r}")
            infer = self._infer_by_k[int(experts)]
        return infer(self.params, jnp.asarray(x), jnp.asarray(budget))
