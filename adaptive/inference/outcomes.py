"""Per-example outcomes of a trained model over a split, under every inference budget at once.

One full trajectory per batch (`infer.infer_every_step_budget`: every step up to the cap, with
the inference capacity of the experts) gives what the budgeted inference function returns under
every step budget 1..cap and, for MoE models, every expert budget k = 1..k_max, so a whole
accuracy-vs-budget curve costs one pass per k instead of one pass per budget. Each k runs as it
is served (buffers and capacity sized for k), and with expert capacity an example's answer
depends on the batch it shares slots with: `batch_size` sets that batch (default: the config's
evaluation batch). Each step's own prediction and confidence are kept too, for anytime accuracy
and for calibrating exit thresholds (adaptive/evaluation/thresholds.py). A static model has one
answer, the same under every step budget. How this relates to `scoring.score_split`: see
adaptive/inference/scoring.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.config import step_cap
from adaptive.inference.infer import infer_every_step_budget
from adaptive.inference.scoring import split_batches
from adaptive.nn import halting as H


@dataclass
class Outcomes:
    """Arrays over the n real examples of a split. Budgets index the leading axes: step budget
    t = 1..cap on axis -2, expert budget k = 1..k_max on axis 0 (a single 'all' without experts)."""

    correct_KxTxB: np.ndarray  # bool: the prediction under (k, t) is right
    steps_KxTxB: np.ndarray  # int: steps the model took under (k, t)
    experts_KxTxB: np.ndarray  # int: expert applications per example (0 without experts)
    step_correct_NxB: np.ndarray | None  # each step's own prediction is right (None: ACT, static)
    step_confidence_NxB: np.ndarray | None  # each step's own confidence (None: ACT, static)
    difficulty_B: np.ndarray
    labels_B: np.ndarray

    @property
    def size(self) -> int:
        return int(self.labels_B.shape[0])


def collect(
    graphdef: nnx.GraphDef,
    params: dict,
    cfg,
    split: str,
    *,
    k_max: int | None,
    transform=None,
    batch_size: int | None = None,
    limit: int | None = None,
) -> Outcomes:
    """Outcomes of every real example of `split` (the first `limit` of them, if given;
    `transform(x)` applied to inputs first, e.g. a distribution shift), under all step budgets
    and expert budgets, run in batches of `batch_size`."""
    run = jax.jit(_per_batch(graphdef, cfg), static_argnums=3)
    ks = list(range(1, k_max + 1)) if k_max else [None]
    chunks: dict[str, list] = {name: [] for name in ("correct", "steps", "experts", "step_correct", "conf")}
    difficulty, labels = [], []
    for batch, real in split_batches(cfg, split, batch_size or cfg.train.eval_batch_size, limit):
        x = batch["x"] if transform is None else transform(batch["x"])
        per_k = [jax.device_get(run(params, x, batch["y"], k)) for k in ks]
        for i, name in enumerate(("correct", "steps", "experts")):
            chunks[name].append(np.stack([p[i] for p in per_k])[..., real])
        if per_k[-1][3] is not None:  # per-step predictions at the largest expert budget
            chunks["step_correct"].append(per_k[-1][3][:, real])
            chunks["conf"].append(per_k[-1][4][:, real])
        difficulty.append(batch["difficulty"][real])
        labels.append(batch["y"][real])
    if not labels:
        raise ValueError(f"split {split!r} has no examples")
    joined = {k: np.concatenate(v, axis=-1) if v else None for k, v in chunks.items()}
    return Outcomes(
        joined["correct"],
        joined["steps"],
        joined["experts"],
        joined["step_correct"],
        joined["conf"],
        np.concatenate(difficulty),
        np.concatenate(labels),
    )


def _per_batch(graphdef: nnx.GraphDef, cfg):
    """`per_batch(params, x, y, k)` -> (correct, steps, experts under each step budget [T, B];
    each step's own correctness and confidence [N, B], or None)."""
    cap, confidence_kind = step_cap(cfg), cfg.halting.confidence

    def per_batch(params, x, y, k):
        out, step_logits = infer_every_step_budget(graphdef, k, cap)(params, x)
        step_correct = step_conf = None
        if step_logits is not None:
            step_correct = jnp.argmax(step_logits, -1) == y
            step_conf = H.confidence(step_logits, confidence_kind)
        return jnp.argmax(out.logits_BxC, -1) == y, out.steps_B, out.experts_B, step_correct, step_conf

    return per_batch
