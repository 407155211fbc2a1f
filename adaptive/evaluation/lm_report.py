"""`adaptive eval` for a language model: bits per byte against FLOPs per token, and where the
compute goes.

Every point runs the model as decoding would (exits at a threshold with state propagation, MoD
blocks routed by their causal predictor) over every window of the split, at one operating point
of each knob the model has: `every block` (no exits taken, MoD predictors at 0, every expert a
router may give; `MoD as trained` on a MoD model), then one point per exit threshold (exits, and
the threshold `adaptive calibrate-exits` certified for the checkpoint, labelled so), per MoD
predictor bias (a token runs
a MoD block when its predictor's logit exceeds it: the decoding-time capacity), per expert
budget k_active = 1 .. k - 1 (experts). Each point reports bits per byte (targets that are
bytes), next-token accuracy, blocks per token (mean and histogram), FLOPs per token
(adaptive.compute.lm_flops pricing what each token reached and ran, block by block), the share
of tokens each MoD block ran, experts per token, and blocks per token by the class of the token
predicted (whitespace, punctuation,
identifier, digit, other: CALM's "easy tokens exit early") and, on `addition`, by the answer
digit's carry-chain length. The points on the Pareto front (no other point has both fewer FLOPs
and fewer bits) are marked; plots: bits per byte against FLOPs per token, and the histogram of
blocks per token at each threshold. With an artifact's operating points (`--points ART`,
adaptive.evaluation.lm_points) the bits-per-byte plot also draws each (precision, pruning) point
at its FLOPs per token: the validation figures its export measured (a point's generation returns
tokens, not the logits bits per byte need), so only the validation split's report takes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from adaptive.compute.lm_flops import lm_flops
from adaptive.data import byte_vocab
from adaptive.evaluation.curves import on_front
from adaptive.evaluation.plot_labels import annotate
from adaptive.inference.restore import Run, load_run
from adaptive.inference.scoring import split_batches
from adaptive.workdir import exit_calibration
from adaptive.workdir.runinfo import write_atomic

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
# Each confidence measure's scale: the cosine of consecutive states sits close to 1, and a
# margin (top-1 minus top-2) below the top probability.
THRESHOLDS_OF = {
    "max_prob": THRESHOLDS,
    "classifier": THRESHOLDS,
    "margin": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    "state_saturation": (0.9, 0.95, 0.98, 0.99, 0.995, 0.999),
}
MOD_BIASES = (-2.0, -1.0, 1.0, 2.0)  # the predictor's logit a token must exceed (training's is 0)
LN2 = math.log(2.0)


class Knobs(NamedTuple):
    """One operating point: None leaves a knob where training left it."""

    threshold: float | None = None  # exits taken at this confidence (None: no exits taken)
    mod_bias: float | None = None  # MoD blocks run where the predictor's logit exceeds it (None: 0)
    experts: int | None = None  # k_active, the most experts per token (None: the router's k)
    confidence: str | None = None  # the exits' confidence measure (None: the trained one)

    def label(self) -> str:
        parts = [f"exit at {self.threshold:g}"] if self.threshold is not None else []
        parts = [f"{self.confidence} {parts[0]}"] if self.confidence is not None and parts else parts
        parts += [f"MoD bias {self.mod_bias:+g}"] if self.mod_bias is not None else []
        parts += [f"{self.experts} expert{'s' * (self.experts != 1)} a block"] if self.experts is not None else []
        return ", ".join(parts) or "every block"


def operating_points(cfg, confidences: tuple[str, ...] = ()) -> list[Knobs]:
    """`every block`, then each knob of the model moved on its own; exits at each threshold of
    the trained confidence measure, or of each of `confidences` (a model trained with exit
    classifiers can be read with any measure; one without them, with any but `classifier`)."""
    points = [Knobs()]
    if cfg.lm.exits and not confidences:
        points += [Knobs(threshold=t) for t in THRESHOLDS_OF[cfg.lm.confidence]]
    for confidence in confidences if cfg.lm.exits else ():
        if confidence == "classifier" and cfg.lm.confidence != "classifier":
            raise ValueError("confidence 'classifier' needs a model trained with lm.confidence=classifier")
        points += [Knobs(threshold=t, confidence=confidence) for t in THRESHOLDS_OF[confidence]]
    if cfg.lm.mod_capacity > 0:
        points += [Knobs(mod_bias=b) for b in MOD_BIASES]
    if cfg.moe.enabled:  # (a language model routes by token choice: config_checks)
        points += [Knobs(experts=k) for k in range(1, cfg.moe.k)]
    return points


def _certified_threshold(run: Run) -> float | None:
    """The exit threshold `adaptive calibrate-exits` certified for this checkpoint (None: none,
    or one that no token passes)."""
    if not run.cfg.lm.exits:
        return None
    record, _ = exit_calibration.for_step(run.workdir, run.step)
    threshold = None if record is None else float(record["threshold"])
    if threshold is None or threshold >= 1.0:
        return None
    # a calibration that stored float32's 0.9499999881 names the grid's 0.95: one row, marked certified
    same = [t for t in THRESHOLDS_OF[run.cfg.lm.confidence] if np.float32(t) == np.float32(threshold)]
    return same[0] if same else threshold


def _forward(run: Run, exiting: bool, confidence: str | None = None):
    """Per-token loss, correctness, blocks, FLOPs, MoD blocks run and experts; the knobs but the
    confidence measure are traced, so one compile serves every point of a measure."""
    cfg = run.cfg
    if confidence is not None:
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, confidence=confidence))
    priced = lm_flops(
        cfg, run.spec.input_shape[0], run.spec.num_classes, batch=cfg.train.eval_batch_size, exiting=exiting
    )
    graphdef = run.graphdef

    def forward(params, x, y, threshold, mod_bias, k_active):
        model = nnx.merge(graphdef, params)
        if confidence is not None:
            model.confidence = confidence
        out = model(
            x,
            train=False,
            exit_threshold=threshold if exiting else None,
            mod_bias=mod_bias,
            k_active=k_active if run.cfg.moe.enabled else None,
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits_BxLxV.astype(np.float32), y)
        flops = priced.of_tokens(out.reached_NxBxL, out.ran_NxBxL, out.experts_NxBxL)
        mod_ran = out.ran_NxBxL[np.asarray(priced.mod_layers, int)] if priced.mod_layers else out.ran_NxBxL[:0]
        experts = out.experts_BxL if out.experts_BxL is not None else out.layers_BxL * 0
        return ce, out.logits_BxLxV.argmax(-1) == y, out.layers_BxL, flops, mod_ran.mean(0), experts

    return jax.jit(forward)


def _per_token(run: Run, split: str, forward, knobs: Knobs, limit: int | None) -> dict[str, np.ndarray]:
    """Each real target token's loss (nats), correctness, blocks, FLOPs, class and difficulty."""
    names = ("ce", "correct", "blocks", "flops", "mod_ran", "experts", "target", "difficulty")
    parts: dict[str, list] = {name: [] for name in names}
    threshold = np.float32(2.0 if knobs.threshold is None else knobs.threshold)
    bias = np.float32(0.0 if knobs.mod_bias is None else knobs.mod_bias)
    k_active = np.int32(knobs.experts or run.cfg.moe.k)
    for batch, real in split_batches(run.cfg, split, run.cfg.train.eval_batch_size, limit, spread=True):
        outputs = jax.device_get(forward(run.params, batch["x"], batch["y"], threshold, bias, k_active))
        for key, value in zip(names, (*outputs, batch["y"], batch["difficulty"]), strict=True):
            parts[key].append(np.asarray(value)[real].reshape(-1))
    return {key: np.concatenate(values) for key, values in parts.items()}


def _point(run: Run, tokens: dict[str, np.ndarray], knobs: Knobs) -> dict:
    blocks = tokens["blocks"]
    depth = run.cfg.model.depth
    byte = tokens["target"] < byte_vocab.BOS
    classes = byte_vocab.token_class(tokens["target"])
    point = {
        **knobs._asdict(),
        # with MoD blocks, the knobs' defaults are the routing as trained, not every block run
        "label": "MoD as trained" if knobs == Knobs() and run.cfg.lm.mod_capacity > 0 else knobs.label(),
        "bits_per_byte": float(tokens["ce"][byte].sum() / max(byte.sum(), 1) / LN2),
        "accuracy": float(tokens["correct"].mean()),
        "blocks_mean": float(blocks.mean()),
        "flops_per_token": float(tokens["flops"].mean()),
        "mod_share": float(tokens["mod_ran"].mean()) if run.cfg.lm.mod_capacity > 0 else None,
        "experts_per_token": float(tokens["experts"].mean()) if run.cfg.moe.enabled else None,
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


def score_point(run: Run, split: str, knobs: Knobs | None = None, limit: int | None = None) -> dict:
    """One operating point of `run` on `split` (default: every block, as trained), as the
    report's points read: bits per byte, next-byte accuracy, blocks and FLOPs per token."""
    knobs = knobs or Knobs()
    forward = _forward(run, knobs.threshold is not None, knobs.confidence)
    return _point(run, _per_token(run, split, forward, knobs, limit), knobs)


def lm_report(
    run: Run,
    split: str,
    out_dir: Path,
    *,
    limit: int | None = None,
    points: list[Knobs] | None = None,
    artifact_points: list[dict] | None = None,
) -> tuple[dict, list[Path]]:
    """The report of `run` on `split` (`limit` windows spread over it when given) at `points`
    (default: `operating_points`) and its plots; `artifact_points`: an artifact's precision and
    pruning points (`artifact_rows`), drawn beside them."""
    forwards: dict = {}

    def tokens(knobs: Knobs) -> dict[str, np.ndarray]:
        key = (knobs.threshold is not None, knobs.confidence)
        if key not in forwards:
            forwards[key] = _forward(run, *key)
        return _per_token(run, split, forwards[key], knobs, limit)

    certified = _certified_threshold(run) if points is None else None
    knobs_list = points or operating_points(run.cfg)
    if certified is not None and Knobs(threshold=certified) not in knobs_list:
        knobs_list = [*knobs_list, Knobs(threshold=certified)]
    points = [_point(run, tokens(knobs), knobs) for knobs in knobs_list]
    for p in points:  # the threshold generate and the artifact use by default
        p["certified"] = certified is not None and p["threshold"] == certified and p["confidence"] is None
        p["label"] += " (certified)" if p["certified"] else ""
    for p, front in zip(points, on_front([(p["flops_per_token"], -p["bits_per_byte"]) for p in points]), strict=True):
        p["pareto"] = front
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{split}-step{run.step}"  # per step, as the report beside them: another step's eval keeps these
    paths = [_plot_front(points, out_dir / f"{prefix}-bits_vs_flops.png", artifact_points or [])]
    if run.cfg.lm.exits or run.cfg.lm.mod_capacity > 0:  # the models whose tokens run different blocks
        paths.append(_plot_histograms(points, run.cfg.model.depth, out_dir / f"{prefix}-blocks_histogram.png"))
    report = {"split": split, "step": run.step, "points": points}
    if artifact_points:
        report["operating_points"] = artifact_points
    return report, paths


def artifact_rows(run: Run, artifact: str | Path) -> list[dict]:
    """One row per operating point of a language model's `artifact` exported from `run`: its
    validation bits per byte and accuracy, FLOPs per token, weights, memory and ms per token as
    meta.json gives them, and whether it is on the Pareto front of bits per byte against FLOPs
    and against ms per token."""
    from adaptive.evaluation.points_report import points_of
    from adaptive.inference.lm_export import load_lm_artifact

    _, meta = load_lm_artifact(artifact)
    rows = [
        {
            "label": f"{e['precision']} prune {e['prune']:g}",
            "precision": e["precision"],
            "prune": e["prune"],
            "validation_bits_per_byte": e["bits_per_byte"],
            "validation_accuracy": e["accuracy"],
            # priced as the report's own points are, over a training window (older artifacts
            # priced `flops` so); what the artifact's generation spends over its cache beside it
            "flops_per_token": e.get("flops_at_window", e["flops"]),
            "served_flops_per_token": e["flops"],
            "weight_bytes": e["weight_bytes"],
            "memory_mb": e["memory"]["total_mb"],
            "ms_per_token": e["latency_ms"]["per_token"],
            "latency_batch": e["latency_ms"]["batch"],
        }
        for e in points_of(meta, run, artifact)
    ]
    for axis in ("flops_per_token", "ms_per_token"):
        for r, front in zip(rows, on_front([(r[axis], -r["validation_bits_per_byte"]) for r in rows]), strict=True):
            r[f"pareto_{axis}"] = front
    return rows


def _plot_front(points: list[dict], path: Path, artifact_points: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = set()
    for p in points:  # one marker where settings give one result: the first's, as on_front marks it
        at = (p["flops_per_token"], p["bits_per_byte"])
        if at not in drawn:
            ax.scatter(*at, marker="o" if p["pareto"] else "x")
            drawn.add(at)
    annotate(ax, [(p["flops_per_token"], p["bits_per_byte"], p["label"]) for p in points], fontsize=7)
    for r in artifact_points:  # a marker per precision, hollow when pruned (as a classifier's points)
        marker = {"fp32": "o", "bf16": "s", "int8": "^", "int4": "v"}[r["precision"]]
        at = (r["flops_per_token"], r["validation_bits_per_byte"])
        ax.scatter(*at, marker=marker, s=55, edgecolors="C3", facecolors="C3" if r["prune"] == 0 else "none")
    labels = [(r["flops_per_token"], r["validation_bits_per_byte"], r["label"]) for r in artifact_points]
    annotate(ax, labels, fontsize=6, xytext=(3, -8), textcoords="offset points", color="C3")
    ax.set_xlabel("FLOPs per token")
    ax.set_ylabel("bits per byte")
    also = "; red: the artifact's precision and pruning points, priced through every block" if artifact_points else ""
    ax.set_title(f"bits per byte against compute (o: Pareto front{also})", fontsize=9)
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
        label = p["label"]
        share = np.asarray(p["blocks_histogram"], float) / max(p["tokens"], 1)
        offset = (i - (len(points) - 1) / 2) * width  # each group of bars centred on its block count
        ax.bar(np.arange(1, depth + 1) + offset, share, width=width, label=label)
    ax.set_xticks(np.arange(1, depth + 1))
    ax.set_xlabel("blocks a token went through")
    ax.set_ylabel("share of tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_lm(
    workdir: str | Path, *, split: str | None = None, step: int | None = None, points: str | Path | None = None
) -> tuple[dict, Path, list[Path]]:
    """`adaptive eval` of a language model's run: the report, written to
    DIR/eval/<split>-lm-report-step<N>.json with its plots beside it; `points`: an artifact of
    the run whose operating points join it (validation split only)."""
    from adaptive.workdir.config_file import RunError

    run = load_run(workdir, step, language_model=True)
    split = split or run.cfg.data.eval_split
    if points is not None and split != "validation":
        raise RunError(
            "--points of a language model draws the validation figures its export measured; "
            f"evaluate the validation split, not {split!r}"
        )
    rows = artifact_rows(run, points) if points is not None else None
    out_dir = run.workdir / "eval"
    report, plots = lm_report(run, split, out_dir, artifact_points=rows)
    path = out_dir / f"{split}-lm-report-step{run.step}.json"
    write_atomic(path, json.dumps(report, indent=2) + "\n")  # a kill never leaves half a report
    return report, path, plots
