"""`adaptive bench generate --json OUT`: early-exit decoding against static models, per token.

Rows `{variant, precision, batch, new_tokens, ms_per_token, mean_layers, ratio}`, each batch size timed side
by side in one run (interleaved calls, medians after warm-up):

- `exit, compacted` (the decoder's default) and `exit, all rows`: a model with exits after every
  block, its threshold set (on a first generation) so that tokens pass `depth` blocks on average,
  decoding with each decode step's blocks run on only the rows still in them, gathered, or on
  every row while any is;
- `static d`: models of d blocks without exits, for the d around the exit model's realized mean
  depth; `ratio` is an exit variant's time over the static time interpolated at its realized mean
  depth (1 for the static rows; NaN where noise outweighed a time, `_per_token`). `depth` defaults to
  halfway between 1 and the model's blocks (2.5 of 4). A deeper static model timed clearly faster
  than a shallower one is noise, said in a warning: every ratio read from them is too.

A decode step's time is (time for N new tokens - time for 1) / (N - 1): the prefill and the
first token are the same in both calls and cancel. Every sequence runs to N tokens (EOS
ignored), sampled at temperature 1 with a seed per row, so rows leave at different blocks. The
models are freshly initialised (their exit units random, so a token's depth varies as trained
exits' do), or, with `--workdir`, a trained run's exit model against fresh static ones of its
shape. With `--thresholds T1,T2,...` (and `--workdir`), the run's exit model at each threshold
is timed against itself running every block instead (`ratio` is then that speedup's inverse):
what a certified threshold (`adaptive calibrate-exits`) buys in wall-clock time.

With `--precisions fp32,bf16,int8` every model is also decoded with its weights at each
precision (adaptive.nn.quantize, as an exported operating point stores them), all of them timed
side by side; each row names its `precision`, and an exit variant's ratio is to the static
models at the same precision. Smaller weights change what stays in cache: at width 128 this
CPU's L2 holds two fp32 blocks but not three, while an exit model touches all its blocks.
"""

from __future__ import annotations

import math
import sys

import jax
import numpy as np
from flax import nnx

from adaptive.bench.results import warn_deeper_faster, write_json
from adaptive.compute.lm_flops import LMFlops
from adaptive.compute.timing import time_side_by_side
from adaptive.config import ConfigError
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.evaluation.tables import print_table
from adaptive.inference.generate import Decoder
from adaptive.nn.lm import LanguageModel
from adaptive.nn.quantize import quantize_model

COLUMNS = ["variant", "precision", "batch", "new_tokens", "ms_per_token", "mean_layers", "ratio"]
PROMPT = 16


def _model(width: int, layers: int, heads: int, length: int, exits: bool, seed: int = 0) -> LanguageModel:
    model = LanguageModel(
        vocab=VOCAB_SIZE,
        width=width,
        layers=layers,
        heads=heads,
        max_length=length,
        exits=exits,
        confidence="classifier",
        rngs=nnx.Rngs(seed),
    )
    if exits:  # random exit units: each token's confidence differs, so rows leave at different blocks
        for i, unit in enumerate(model.exit_units):
            unit.kernel[...] = jax.random.normal(jax.random.key(100 + i), unit.kernel[...].shape)
    return model


def _decoder(model: LanguageModel, new_tokens: int, *, compact: bool = True, precision: str = "fp32") -> Decoder:
    graphdef, params = quantize_model(*nnx.split(model, nnx.Param), precision)
    layers = model.num_layers
    unpriced = LMFlops(0.0, 0.0, 0.0, layers, 0, reach_costs=(0.0,) * layers, run_costs=(0.0,) * layers)
    return Decoder(graphdef, params, unpriced, prompt_capacity=PROMPT, new_capacity=new_tokens, compact=compact)


def _calls(decoder: Decoder, batch: int, new_tokens: int, threshold: float):
    """Zero-argument calls generating N tokens and 1 token, and the N-token call's mean depth."""
    prompts = [np.random.default_rng(i).integers(0, 256, PROMPT).astype(np.int32) for i in range(batch)]
    common = dict(threshold=threshold, temperature=1.0, seed=list(range(batch)), ignore_eos=True)
    full, one = decoder.limits(batch, **common), decoder.limits(batch, max_new_tokens=1, **common)
    layers = np.asarray(decoder(prompts, full).layers_BxM)
    return (lambda: decoder(prompts, full)), (lambda: decoder(prompts, one)), float(layers.mean())


def threshold_for_depth(decoder: Decoder, batch: int, new_tokens: int, depth: float) -> tuple[float, float]:
    """(threshold, realized mean depth): bisection on the exit threshold until the generation's
    mean depth is within 0.05 blocks of `depth` (or 20 halvings)."""
    low, high, best = 0.0, 1.0, (1.0, float(decoder.blocks))
    for _ in range(20):
        middle = (low + high) / 2
        realized = _calls(decoder, batch, new_tokens, middle)[2]
        if abs(realized - depth) < abs(best[1] - depth):
            best = (middle, realized)
        if abs(realized - depth) < 0.05:
            break
        low, high = (middle, high) if realized < depth else (low, middle)
    return best


def run(
    *,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    depth: float | None = None,
    batches: tuple[int, ...] = (1, 8),
    new_tokens: int = 64,
    repeats: int = 15,
    workdir: str | None = None,
    thresholds: tuple[float, ...] = (),
    precisions: tuple[str, ...] = ("fp32",),
    json_out: str | None = None,
) -> list[dict]:
    if thresholds:
        return _at_thresholds(workdir, thresholds, batches, new_tokens, repeats, precisions, json_out)
    length = PROMPT + new_tokens
    if workdir is not None:  # its blocks, not --layers, bound the depth asked for
        exit_model, width, layers, heads = _trained(workdir, length)
    if depth is None:  # halfway between the first exit and every block
        depth = (1 + layers) / 2
    if not 1.0 <= depth <= layers:
        raise ValueError(f"--depth {depth} must be within [1, {layers}] blocks")
    if workdir is None:
        exit_model = _model(width, layers, heads, length, exits=True)
    rows = []
    for batch in batches:
        calls, depths, statics_at = {}, {}, {}
        for precision in precisions:
            exits = {"exit, compacted": True, "exit, all rows": False}
            decoders = {
                name: _decoder(exit_model, new_tokens, compact=c, precision=precision) for name, c in exits.items()
            }
            threshold, _ = threshold_for_depth(decoders["exit, compacted"], batch, new_tokens, depth)
            for name, decoder in decoders.items():
                n, one, depths[name, precision] = _calls(decoder, batch, new_tokens, threshold)
                calls[name, precision, "N"], calls[name, precision, "1"] = n, one
            realized = depths["exit, compacted", precision]
            statics_at[precision] = sorted({max(1, math.floor(realized)), min(layers, math.ceil(realized))})
            for d in statics_at[precision]:
                static = _decoder(_model(width, d, heads, length, exits=False), new_tokens, precision=precision)
                key = (f"static {d}", precision)
                calls[(*key, "N")], calls[(*key, "1")], depths[key] = _calls(static, batch, new_tokens, 2.0)
        ms = time_side_by_side(calls, repeats=repeats)
        per_token = _per_token(ms, depths, new_tokens, batch)
        for (name, precision), layers_used in depths.items():
            around = statics_at[precision]
            statics = np.array([per_token[f"static {d}", precision] for d in around])
            static_ms = float(np.interp(layers_used, np.array(around, float), statics))
            ratio = 1.0 if name.startswith("static") else per_token[name, precision] / static_ms
            rows.append(_row(name, precision, batch, new_tokens, per_token[name, precision], layers_used, ratio))
        _check_statics(per_token, statics_at, batch)
    around = sorted({d for ds in statics_at.values() for d in ds})
    print(
        f"{MEDIANS}; ratio = an exit row's ms_per_token / the static ms_per_token interpolated at its mean_layers "
        f"between {' and '.join(f'static {d}' for d in around)} at the same precision and batch (static rows: 1)"
    )
    print_table(rows, COLUMNS)
    if json_out:
        write_json(json_out, rows)
    return rows


MEDIANS = "ms_per_token = (median ms of new_tokens tokens - median ms of 1) / (new_tokens - 1)"


def _check_statics(per_token: dict, statics_at: dict, batch: int) -> None:
    """A warning where a deeper static model decoded clearly faster than a shallower one."""
    for precision, around in statics_at.items():
        warn_deeper_faster(
            [(d, per_token[f"static {d}", precision]) for d in around],
            lambda d1, ms1, d2, ms2, precision=precision: (
                f"at batch {batch} ({precision}) static {d2} blocks decoded "
                f"{ms1 / ms2:.1f}x faster than static {d1} ({ms2:.3g} < {ms1:.3g} ms per token), so every exit ratio "
                "read from them is noise too"
            ),
            more="--repeats or --new-tokens",
        )


def _at_thresholds(workdir, thresholds, batches, new_tokens: int, repeats: int, precisions, json_out) -> list[dict]:
    """A trained run's exit model at each threshold against itself with every block (threshold
    2), at each precision: the wall-clock speedup a threshold buys (rows `exit at T`, ratio to
    `every block` at the same precision)."""
    if workdir is None:
        raise ConfigError("--thresholds times a trained run's exits: give --workdir")
    model = _trained(workdir, PROMPT + new_tokens)[0]
    rows = []
    for batch in batches:
        calls, depths = {}, {}
        for precision in precisions:
            decoder = _decoder(model, new_tokens, precision=precision)
            for name, threshold in [("every block", 2.0), *((f"exit at {t:g}", t) for t in thresholds)]:
                key = (name, precision)
                calls[(*key, "N")], calls[(*key, "1")], depths[key] = _calls(decoder, batch, new_tokens, threshold)
        ms = time_side_by_side(calls, repeats=repeats)
        per_token = _per_token(ms, depths, new_tokens, batch)
        for (name, precision), layers_used in depths.items():
            ratio = per_token[name, precision] / per_token["every block", precision]
            rows.append(_row(name, precision, batch, new_tokens, per_token[name, precision], layers_used, ratio))
    print(f"{MEDIANS}; ratio = ms_per_token / the 'every block' row's at the same precision and batch")
    print_table(rows, COLUMNS)
    if json_out:
        write_json(json_out, rows)
    return rows


def _per_token(ms: dict, keys, new_tokens: int, batch: int) -> dict:
    """Each variant's decode-step time, N tokens' time less one token's over N - 1. When timing
    noise outweighs the N - 1 steps (a tiny model, few tokens) the difference can come out zero
    or negative: that row's time is NaN (null in JSON), with a warning, not a figure to trust."""
    per_token = {key: (ms[(*key, "N")] - ms[(*key, "1")]) / (new_tokens - 1) for key in keys}
    noisy = [" ".join(key) for key, value in per_token.items() if value <= 0]
    if noisy:
        print(
            f"warning: at batch {batch}, {new_tokens} tokens took no longer than 1 for {', '.join(noisy)}: "
            "timing noise outweighs the decode steps: their ms_per_token, and every ratio read from them, are NaN; "
            "raise --new-tokens or --repeats",
            file=sys.stderr,
        )
    return {key: value if value > 0 else math.nan for key, value in per_token.items()}


def _trained(workdir: str, length: int):
    """A trained language model's run with exits: (model, width, blocks, heads)."""
    from adaptive.inference.restore import load_run

    trained = load_run(workdir, language_model=True)
    if trained.cfg.model.kind != "lm":
        raise ConfigError(f"{workdir} holds a classifier (model.kind={trained.cfg.model.kind!r}); this times decoding")
    if not trained.cfg.lm.exits:
        raise ConfigError(f"{workdir} has no exits (lm.exits=false): nothing for early-exit decoding to skip")
    model = nnx.merge(trained.graphdef, trained.params)
    if model.position_embed is not None and length > model.max_length:
        raise ConfigError(f"{length} prompt and new tokens exceed the run's learned positions ({model.max_length})")
    return model, trained.cfg.model.hidden, model.num_layers, trained.cfg.model.num_heads


def _row(variant: str, precision: str, batch: int, new_tokens: int, ms: float, layers: float, ratio: float) -> dict:
    return {
        "variant": variant,
        "precision": precision,
        "batch": batch,
        "new_tokens": new_tokens,
        "ms_per_token": round(ms, 4),
        "mean_layers": round(layers, 3),
        "ratio": round(ratio, 3) if math.isfinite(ms) else math.nan,  # a static row's 1 included
    }
