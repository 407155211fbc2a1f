"""`adaptive eval` for a language model: bits per byte against FLOPs per token, and where the
compute goes.

Every point runs the model as decoding would (exits at a threshold with state propagation, MoD
blocks routed by their causal predictor) over every window of the split. For a model with exits
there is one point per exit threshold, plus `every block` (no exits taken); otherwise the one
point. Each point reports bits per byte (targets that are bytes), next-token accuracy, blocks per
token (mean and histogram), FLOPs per token (adaptive.compute.lm_flops at each token's realized
blocks), and blocks per token by the class of the token predicted (whitespace, punctuation,
identifier, digit, other: CALM's "easy tokens exit early") and, on `addition`, by the answer
digit's carry-chain length. The points on the Pareto front (no other point has both fewer FLOPs
and fewer bits) are marked; plots: bits per byte against FLOPs per token, and the histogram of
blocks per token at each threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from adaptive.compute.lm_flops import lm_flops
from adaptive.data import byte_vocab
from adaptive.evaluation.curves import pareto_front
from adaptive.inference.restore import Run
from adaptive.inference.scoring import split_batches

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
LN2 = math.log(2.0)


def _forward(graphdef, exiting: bool):
    """Per-token loss, correctness and blocks; the threshold is traced, so one compile serves all."""

    def forward(params, x, y, threshold):
        out = nnx.merge(graphdef, params)(x, train=False, exit_threshold=threshold if exiting else None)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits_BxLxV.astype(np.float32), y)
        return ce, out.logits_BxLxV.argmax(-1) == y, out.layers_BxL

    return jax.jit(forward)


def _per_token(run: Run, split: str, forward, threshold: float | None, limit: int | None) -> dict[str, np.ndarray]:
    """Each real target token's loss (nats), correctness, blocks, class and difficulty."""
    parts: dict[str, list] = {"ce": [], "correct": [], "blocks": [], "target": [], "difficulty": []}
    value = np.float32(2.0 if threshold is None else threshold)
    for batch, real in split_batches(run.cfg, split, run.cfg.train.eval_batch_size, limit):
        ce, correct, blocks = jax.device_get(forward(run.params, batch["x"], batch["y"], value))
        for key, value in (
            ("ce", ce),
            ("correct", correct),
            ("blocks", blocks),
            ("target", batch["y"]),
            ("difficulty", batch["difficulty"]),
        ):
            parts[key].append(np.asarray(value)[real].reshape(-1))
    return {key: np.concatenate(values) for key, values in parts.items()}


def _point(run: Run, tokens: dict[str, np.ndarray], threshold: float | None) -> dict:
    flops = lm_flops(
        run.cfg,
        run.spec.input_shape[0],
        run.spec.num_classes,
        batch=run.cfg.train.eval_batch_size,
        exiting=threshold is not None,
    )
    blocks = tokens["blocks"]
    depth = run.cfg.model.depth
    per_token_flops = np.array([flops.at_blocks(b) for b in range(depth + 1)])[np.rint(blocks).astype(int)]
    byte = tokens["target"] < byte_vocab.BOS
    classes = byte_vocab.token_class(tokens["target"])
    point = {
        "threshold": threshold,
        "bits_per_byte": float(tokens["ce"][byte].sum() / max(byte.sum(), 1) / LN2),
        "accuracy": float(tokens["correct"].mean()),
        "blocks_mean": float(blocks.mean()),
        "flops_per_token": float(per_token_flops.mean()),
        "blocks_histogram": np.bincount(np.rint(blocks).astype(int), minlength=depth + 1)[1:].tolist(),
        "blocks_by_class": {
            name: float(blocks[classes == i].mean()) if (classes == i).any() else None
            for i, name in enumerate(byte_vocab.TOKEN_CLASSES)
        },
        "tokens": int(len(blocks)),
    }
    graded = tokens["difficulty"] >= 0
    if graded.any():
        d = tokens["difficulty"][graded]
        point["by_difficulty"] = [
            {
                "difficulty": int(k),
                "tokens": int((d == k).sum()),
                "accuracy": float(tokens["correct"][graded][d == k].mean()),
                "blocks_mean": float(blocks[graded][d == k].mean()),
            }
            for k in np.unique(d)
        ]
    return point


def lm_report(run: Run, split: str, out_dir: Path, *, limit: int | None = None) -> tuple[dict, list[Path]]:
    """The report of `run` on `split` (its first `limit` windows when given) and its plots."""
    thresholds: list[float | None] = [None]
    if run.cfg.lm.exits:
        thresholds += list(THRESHOLDS)
    forwards = {exiting: _forward(run.graphdef, exiting) for exiting in (False, True)}
    points = [_point(run, _per_token(run, split, forwards[t is not None], t, limit), t) for t in thresholds]
    front = set(pareto_front([(p["flops_per_token"], -p["bits_per_byte"]) for p in points]))
    for p in points:
        p["pareto"] = (p["flops_per_token"], -p["bits_per_byte"]) in front
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_plot_front(points, out_dir / f"{split}-bits_vs_flops.png")]
    if run.cfg.lm.exits:
        paths.append(_plot_histograms(points, run.cfg.model.depth, out_dir / f"{split}-blocks_histogram.png"))
    return {"split": split, "step": run.step, "points": points}, paths


def _plot_front(points: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        label = "every block" if p["threshold"] is None else f"exit at {p['threshold']:g}"
        ax.scatter(p["flops_per_token"], p["bits_per_byte"], marker="o" if p["pareto"] else "x")
        ax.annotate(label, (p["flops_per_token"], p["bits_per_byte"]), fontsize=7)
    ax.set_xlabel("FLOPs per token")
    ax.set_ylabel("bits per byte")
    ax.set_title("bits per byte against compute (o: Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_histograms(points: list[dict], depth: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(points)
    for i, p in enumerate(points):
        label = "every block" if p["threshold"] is None else f"threshold {p['threshold']:g}"
        share = np.asarray(p["blocks_histogram"], float) / max(p["tokens"], 1)
        ax.bar(np.arange(1, depth + 1) + i * width, share, width=width, label=label)
    ax.set_xlabel("blocks a token went through")
    ax.set_ylabel("share of tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_lm(
    workdir: str | Path, *, split: str | None = None, step: int | None = None
) -> tuple[dict, Path, list[Path]]:
    """`adaptive eval` of a language model's run: the report, written to
    DIR/eval/<split>-lm-report-step<N>.json with its plots beside it."""
    import json

    from adaptive.inference.restore import load_run

    run = load_run(workdir, step, language_model=True)
    split = split or run.cfg.data.eval_split
    out_dir = run.workdir / "eval"
    report, plots = lm_report(run, split, out_dir)
    path = out_dir / f"{split}-lm-report-step{run.step}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report, path, plots
