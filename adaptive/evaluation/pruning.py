"""Structured pruning of a trained run, with its expert scores measured on validation data and a
short fine-tune.

Experts are scored by what the routers did on the validation split: each expert's share of the
kept assignments (routed load) plus its mean router probability (gate mass), both summing to 1
over the experts, so an expert that is often picked or often nearly picked is kept. A classifier's
scores are read from its training forward pass (every step to the cap), whose routing metrics
`moe/expert_usage` and `moe/gate_mass` are means over steps: exact per layer for the classifiers'
shared block (ACT, PonderNet); a classifier with several distinct MoE blocks would share one score,
so it is refused. A language model's are read layer by layer (`..._by_layer`) from its inference
forward pass, every block run. Hidden units need no data (adaptive.nn.prune ranks them by magnitude).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from adaptive.compute.flops import flops_model
from adaptive.compute.lm_flops import lm_flops
from adaptive.config import ConfigError, step_cap
from adaptive.evaluation.quantization import Variant, score
from adaptive.inference.restore import Run
from adaptive.inference.scoring import split_batches
from adaptive.nn.moe import cap_tokens_at_k
from adaptive.nn.prune import attention_layers, feed_forward_blocks, moe_layers, prune_model, shapes_of
from adaptive.nn.quantize import weight_bytes
from adaptive.training.fine_tune import fine_tune


def check_prunable(run: Run, fraction: float) -> None:
    """Refuses, in one line and before any operating point is computed, a model pruning cannot
    cut by `fraction`: nothing to remove (NothingToPrune), or experts whose routing is not scored
    per block."""
    model = nnx.merge(run.graphdef, run.params)
    if not (feed_forward_blocks(model) or attention_layers(model) or moe_layers(model)):
        prune_model(run.graphdef, run.params, fraction)  # raises NothingToPrune, which says why
    _scored_moe_layers(run, moe_layers(model))


def _scored_moe_layers(run: Run, layers: list) -> list:
    """The MoE layers whose experts routing scores rank: a language model's, block by block; a
    classifier's single block (its routing metrics are means over steps, exact for one block)."""
    stacked = bool(layers) and layers[0].w_in[...].ndim > 3  # [steps, experts, width, hidden]
    if run.cfg.model.kind != "lm" and (len(layers) > 1 or stacked):
        count = layers[0].w_in[...].shape[0] if stacked else len(layers)
        raise ConfigError(
            "expert pruning reads routing from a classifier's single MoE block (its scores are means over "
            f"steps); this model has {count} (model.share_weights=false): prune it with --prune 0"
        )
    return layers


def expert_scores(run: Run, split: str = "validation", limit: int | None = 2048) -> list[np.ndarray] | None:
    """One score per expert of each MoE layer (None without experts): routed load + gate mass."""
    layers = _scored_moe_layers(run, moe_layers(nnx.merge(run.graphdef, run.params)))
    if not layers:
        return None
    lm = run.cfg.model.kind == "lm"
    graphdef = run.graphdef

    @jax.jit
    def routing(params, x):
        model = cap_tokens_at_k(nnx.merge(graphdef, params))  # routed as served (expert choice: capped)
        if lm:  # [blocks, experts]: every block's own routing
            metrics = model(x, train=False).metrics
            return metrics["moe/expert_usage_by_layer"], metrics["moe/gate_mass_by_layer"]
        metrics = model(x).metrics
        return metrics["moe/expert_usage"][None], metrics["moe/gate_mass"][None]

    load, mass, batches = 0.0, 0.0, 0
    for batch, real in split_batches(run.cfg, split, run.cfg.train.batch_size, limit, spread=lm):
        if batches and not np.asarray(real).all():  # a padded last batch would count its padding
            continue
        usage, gate = jax.device_get(routing(run.params, batch["x"]))
        load, mass, batches = load + usage, mass + gate, batches + 1
    scores = (np.asarray(load) + np.asarray(mass)) / max(batches, 1)
    if len(scores) != len(layers):  # an ACT language model's one shared block: a row per step
        scores = scores.mean(0, keepdims=True)
    return list(scores)


def flops_of(run: Run) -> float:
    """FLOPs of the run's model as its shapes stand (pruned or not): per example at the step
    cap for a classifier, per token through every block for a language model."""
    cfg, widths = shapes_of(nnx.merge(run.graphdef, run.params)).priced(run.cfg)
    if cfg.model.kind == "lm":
        tokens = lm_flops(cfg, run.spec.input_shape[0], run.spec.num_classes, **widths)
        return float(tokens.extremes(False)[1])
    flops = flops_model(cfg, run.spec.input_shape, run.spec.num_classes, **widths)
    return float(flops.at_steps(step_cap(cfg)))


def flops_at_steps(run: Run) -> list[float]:
    """A classifier's FLOPs per example at each step budget 1..cap, as its shapes stand."""
    cfg, widths = shapes_of(nnx.merge(run.graphdef, run.params)).priced(run.cfg)
    flops = flops_model(cfg, run.spec.input_shape, run.spec.num_classes, **widths)
    return [float(flops.at_steps(s)) for s in range(1, step_cap(cfg) + 1)]


def pruned(
    run: Run,
    fraction: float,
    *,
    fine_tune_steps: int = 200,
    split: str = "validation",
    limit: int | None = None,
    log=None,
) -> Variant:
    """The run with `fraction` of its feed-forward hidden units and experts removed, fine-tuned
    for `fine_tune_steps` steps on the train split, scored on `split`."""
    if split == "test":
        raise ValueError("pruning is judged on validation data; the test split is read once, at the end")
    scores = expert_scores(run, split) if fraction > 0 else None
    graphdef, params = prune_model(run.graphdef, run.params, fraction, scores)
    before = score(dataclasses.replace(run, graphdef=graphdef, params=params), split, limit)
    if log:
        log(f"pruned {fraction:g}: {before} before fine-tuning")
    variant = dataclasses.replace(run, graphdef=graphdef, params=params)
    candidates, best = [{"fine_tune_steps": 0, **before}], (variant, before)
    if fraction > 0 and fine_tune_steps > 0:
        tuned = fine_tune(run.cfg, run.spec, graphdef, params, fine_tune_steps, budget=run.budget, log=log)
        tuned_run = dataclasses.replace(run, graphdef=graphdef, params=tuned)
        after = score(tuned_run, split, limit)
        candidates.append({"fine_tune_steps": fine_tune_steps, **after})
        lm = run.cfg.model.kind == "lm"
        better = after["bits_per_byte"] < before["bits_per_byte"] if lm else after["accuracy"] >= before["accuracy"]
        if better:  # the fine-tune is kept where validation says it helped
            best = (tuned_run, after)
    variant, kept_score = best
    return Variant("fp32", 1.0, variant, kept_score, weight_bytes(variant.params), candidates, prune=fraction)
