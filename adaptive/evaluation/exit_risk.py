"""Risk-controlled exit thresholds: Learn-then-Test with fixed-sequence testing (as CALM does).

The guarantee: with probability >= 1 - epsilon over the calibration windows, the early-exit
model's next-token predictions agree with the full model's on at least 1 - delta of tokens, in
expectation over windows from the same distribution (token-level consistency under teacher
forcing: both models read the real text, and a token's prediction is its argmax).

`agreement(run, split, thresholds)` scores each window of a split at every candidate threshold
(the share of its tokens whose exit prediction is the full model's), and the blocks per token it
spends; `sequence_agreement` does the same for greedy generations from each window's first bytes
(sequence-level consistency: a token generated after an early mistake reads a different text).
`calibrate_threshold` then walks the thresholds from the most conservative (highest) down,
testing H0: risk(threshold) > delta with the Hoeffding-Bentkus p-value of the windows' mean
disagreement, and stops at the first it cannot reject at level epsilon; the lowest rejected
threshold is chosen. Fixed-sequence testing needs no multiplicity correction because the order
is fixed in advance, and windows, not tokens, are the independent draws (tokens of a window are
not independent). With no threshold rejected the answer is "no exits" (the full model).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx
from scipy.stats import binom

from adaptive.inference.generate import decoder_for_run
from adaptive.inference.restore import Run
from adaptive.inference.scoring import split_batches
from adaptive.workdir import exit_calibration

GRID = tuple(round(x, 3) for x in np.linspace(0.99, 0.05, 48))  # highest (safest) first
NO_EXITS = exit_calibration.NO_EXITS


class Agreement(NamedTuple):
    """Per window (W) and candidate threshold (K)."""

    thresholds_K: np.ndarray
    depth: int  # blocks of the full model
    agree_WxK: np.ndarray  # share of the window's tokens whose exit prediction is the full model's
    blocks_WxK: np.ndarray  # mean blocks per token


class Calibration(NamedTuple):
    threshold: float  # NO_EXITS when no candidate could be certified
    delta: float
    epsilon: float
    windows: int
    p_values: list[float]  # of the thresholds tested, in order (the last one failed unless all passed)
    risk: float  # the calibration windows' mean disagreement at the chosen threshold
    blocks: float  # their mean blocks per token there


def agreement(run: Run, split: str, thresholds, *, limit: int | None = None) -> Agreement:
    """Each window's agreement with the full model, and blocks per token, at every threshold."""
    if not run.cfg.lm.exits:
        raise ValueError(f"{run.workdir} has no exits (lm.exits=false): there is no threshold to calibrate")
    graphdef = run.graphdef

    @jax.jit
    def full(params, x):
        return nnx.merge(graphdef, params)(x, train=False).logits_BxLxV.argmax(-1)

    @jax.jit
    def exiting(params, x, full_BxL, threshold):
        out = nnx.merge(graphdef, params)(x, train=False, exit_threshold=threshold)
        return (out.logits_BxLxV.argmax(-1) == full_BxL).mean(-1), out.layers_BxL.mean(-1)

    # kept as given (float64): a certified threshold is then the grid's 0.95, not float32's 0.9499999880
    thresholds = np.asarray(thresholds, np.float64)
    agree, blocks = [], []
    for batch, real in split_batches(run.cfg, split, run.cfg.train.eval_batch_size, limit, spread=True):
        reference = full(run.params, batch["x"])
        per = [jax.device_get(exiting(run.params, batch["x"], reference, np.float32(t))) for t in thresholds]
        agree.append(np.stack([a for a, _ in per], -1)[real])
        blocks.append(np.stack([b for _, b in per], -1)[real])
    if not agree:
        raise ValueError(f"split {split!r} has no windows to calibrate on")
    return Agreement(thresholds, run.cfg.model.depth, np.concatenate(agree), np.concatenate(blocks))


def sequence_agreement(
    run: Run, split: str, thresholds, *, prompt: int, new_tokens: int, limit: int | None = None, batch: int = 64
) -> Agreement:
    """Sequence-level consistency under greedy decoding: each window's first `prompt` bytes are a
    prompt, and its score at a threshold is the share of the `new_tokens` greedy tokens the exit
    model generates that equal the full model's, position by position (after a first difference
    the texts usually part ways, so this is close to the length of the common prefix); blocks
    are the mean blocks of the generated tokens. One compiled decoder serves every threshold."""
    if not run.cfg.lm.exits:
        raise ValueError(f"{run.workdir} has no exits (lm.exits=false): there is no threshold to calibrate")
    decoder = decoder_for_run(run, prompt_capacity=prompt, new_capacity=new_tokens)
    thresholds = np.asarray(thresholds, np.float64)
    agree, blocks = [], []
    for windows, real in split_batches(run.cfg, split, batch, limit, spread=True):
        prompts = [np.asarray(x[:prompt], np.int32) for x in windows["x"][real]]
        if not prompts:
            continue
        n = len(prompts)
        limits = dict(max_new_tokens=new_tokens, ignore_eos=True)
        full = np.asarray(decoder(prompts, decoder.limits(n, threshold=NO_EXITS, **limits)).tokens_BxM)
        per_a, per_b = [], []
        for t in thresholds:
            out = decoder(prompts, decoder.limits(n, threshold=float(t), **limits))
            per_a.append((np.asarray(out.tokens_BxM) == full).mean(-1))
            per_b.append(np.asarray(out.layers_BxM).mean(-1))
        agree.append(np.stack(per_a, -1))
        blocks.append(np.stack(per_b, -1))
    if not agree:
        raise ValueError(f"split {split!r} has no windows to calibrate on")
    return Agreement(thresholds, run.cfg.model.depth, np.concatenate(agree), np.concatenate(blocks))


def hoeffding_bentkus_p(mean_loss: float, n: int, delta: float) -> float:
    """P-value of H0: E[loss] > delta for losses in [0, 1] whose mean over n draws is
    `mean_loss` (Bates et al. 2021, Learn then Test): the smaller of Hoeffding's and Bentkus'."""
    if mean_loss >= delta:
        return 1.0
    a, b = mean_loss, delta
    kl = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b)) if a > 0 else -math.log(1 - b)
    hoeffding = math.exp(-n * kl)
    bentkus = math.e * binom.cdf(math.ceil(n * mean_loss), n, delta)
    return min(1.0, hoeffding, bentkus)


def calibrate_threshold(scores: Agreement, delta: float, epsilon: float, rows=None) -> Calibration:
    """The lowest threshold certified by fixed-sequence testing on `rows` (default: all windows)."""
    if not 0 < delta < 1 or not 0 < epsilon < 1:
        raise ValueError(f"delta={delta} and epsilon={epsilon} must be in (0, 1)")
    agree = scores.agree_WxK if rows is None else scores.agree_WxK[rows]
    blocks = scores.blocks_WxK if rows is None else scores.blocks_WxK[rows]
    n = len(agree)
    if n == 0:
        raise ValueError("no calibration windows")
    order = np.argsort(-scores.thresholds_K, kind="stable")  # highest threshold first
    chosen, p_values = None, []
    for k in order:
        p = hoeffding_bentkus_p(float(1.0 - agree[:, k].mean()), n, delta)
        p_values.append(p)
        if p > epsilon:
            break
        chosen = k
    if chosen is None:
        return Calibration(NO_EXITS, delta, epsilon, n, p_values, 0.0, float("nan"))
    risk = float(1.0 - agree[:, chosen].mean())
    return Calibration(
        float(scores.thresholds_K[chosen]), delta, epsilon, n, p_values, risk, float(blocks[:, chosen].mean())
    )


def guarantee_draws(
    calibration: Agreement, test: Agreement, delta: float, epsilon: float, *, windows: int, draws: int, seed: int = 0
) -> dict:
    """How often the guarantee held: `draws` times, calibrate on `windows` random calibration
    windows and measure the chosen threshold's disagreement on every test window. Returns the
    share of draws where it was <= delta, and the chosen thresholds' test blocks per token (the
    full model's depth for a draw that certified none)."""
    if windows > len(calibration.agree_WxK):
        raise ValueError(f"{windows} calibration windows asked for, {len(calibration.agree_WxK)} available")
    if not np.array_equal(calibration.thresholds_K, test.thresholds_K):
        raise ValueError("calibration and test were scored at different thresholds")
    rng = np.random.default_rng(seed)
    held, blocks, thresholds = [], [], []
    full_blocks = float(test.depth)
    for _ in range(draws):
        rows = rng.choice(len(calibration.agree_WxK), windows, replace=False)
        chosen = calibrate_threshold(calibration, delta, epsilon, rows).threshold
        thresholds.append(chosen)
        if chosen == NO_EXITS:
            held.append(True)
            blocks.append(full_blocks)
            continue
        k = int(np.flatnonzero(test.thresholds_K == chosen)[0])
        held.append(1.0 - test.agree_WxK[:, k].mean() <= delta)
        blocks.append(float(test.blocks_WxK[:, k].mean()))
    return {
        "delta": delta,
        "epsilon": epsilon,
        "windows": windows,
        "draws": draws,
        "held": float(np.mean(held)),
        "thresholds": thresholds,
        "test_blocks_mean": float(np.mean(blocks)),
    }
