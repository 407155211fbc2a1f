"""Per-example outcomes of a trained model over a split, under every inference budget at once.

One full trajectory per batch (every step up to the cap, as training runs it, but with the
inference capacity of the experts) gives what `infer` would return under every step budget
1..cap and, for MoE models, every expert budget k = 1..k_max: tests check that the trajectory
rule and the while_loop agree, so a whole accuracy-vs-budget curve costs one pass per k instead
of one pass per budget. Each k runs as it is served (`limit_experts`: buffers and capacity sized
for k), and with expert capacity an example's answer depends on the batch it shares slots with:
`batch_size` sets that batch (default: the config's evaluation batch). Each step's own
prediction and confidence are kept too, for anytime accuracy and for calibrating exit thresholds
(adaptive/thresholds.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import data
from adaptive.nn import halting as H
from adaptive.nn.moe import limit_experts


@dataclass
class Outcomes:
    """Arrays over the n real examples of a split. Budgets index the leading axes: step budget
    t = 1..cap on axis -2, expert budget k = 1..k_max on axis 0 (a single 'all' without experts)."""

    correct_KxTxB: np.ndarray  # bool: the prediction under (k, t) is right
    steps_KxTxB: np.ndarray  # int: steps the model took under (k, t)
    experts_KxTxB: np.ndarray  # int: expert applications per example (0 without experts)
    step_correct_NxB: np.ndarray | None  # each step's own prediction is right (per-step heads only)
    step_confidence_NxB: np.ndarray | None  # each step's own confidence (per-step heads only)
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
    policy, confidence_kind = cfg.halting.policy, cfg.halting.confidence
    cap = cfg.halting.max_steps
    if policy == "none":
        raise ValueError("a static model has one operating point; score it with a step budget instead")

    def per_batch(params, x, y, k):
        model = limit_experts(nnx.merge(graphdef, params), k)  # static per k: as the artifact runs it
        traj = model.trajectory(x, train=False)
        correct, steps, experts = [], [], []
        for t in range(1, cap + 1):
            out = model.infer_from_trajectory(traj, jnp.full((x.shape[0],), t, jnp.int32))
            correct.append(jnp.argmax(out.logits_BxC, -1) == y)
            steps.append(out.steps_B)
            if traj.experts_NxB is None:
                experts.append(jnp.zeros_like(out.steps_B))
            else:  # expert applications on the steps each example ran
                ran = H.step_numbers(cap, traj.experts_NxB) <= out.steps_B
                experts.append((traj.experts_NxB * ran).sum(0).astype(jnp.int32))
        step_correct = step_conf = None
        if traj.logits_NxBxC is not None:
            step_correct = jnp.argmax(traj.logits_NxBxC, -1) == y
            step_conf = H.confidence(traj.logits_NxBxC, confidence_kind)
        return jnp.stack(correct), jnp.stack(steps), jnp.stack(experts), step_correct, step_conf

    run = jax.jit(per_batch, static_argnums=3)
    ks = list(range(1, k_max + 1)) if k_max else [None]
    chunks: dict[str, list] = {name: [] for name in ("correct", "steps", "experts", "step_correct", "conf")}
    difficulty, labels = [], []
    seen = 0
    for batch in data.eval_batches(cfg.data, split, batch_size or cfg.train.eval_batch_size):
        real = batch["mask"] > 0
        if limit is not None:
            if seen >= limit:
                break
            real &= seen + np.arange(len(real)) < limit
        seen += int(real.sum())
        x = batch["x"] if transform is None else transform(batch["x"])
        per_k = [jax.device_get(run(params, x, batch["y"], k)) for k in ks]
        chunks["correct"].append(np.stack([p[0] for p in per_k])[..., real])
        chunks["steps"].append(np.stack([p[1] for p in per_k])[..., real])
        chunks["experts"].append(np.stack([p[2] for p in per_k])[..., real])
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
