"""`adaptive generate`: text from a trained language model under a budget, token by token.

    adaptive generate --workdir runs/lm-exits --prompt "def main(" --max-new-tokens 64 \\
        --budget 2e7 --unit flops

`--unit flops`: a FLOPs budget for the tokens after the first (adaptive.inference.generate paces
it); `layers`: a cap on the blocks each token may run; `ms`: a wall-clock budget for the new
tokens, turned into a per-token layer cap by timing the compiled decoder at every cap first
(the loop itself cannot read a clock). Each token's depth is printed under the text.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from adaptive.data import byte_vocab
from adaptive.inference import generate as G
from adaptive.inference.restore import load_run
from adaptive.workdir import exit_calibration
from adaptive.workdir.config_file import RunError, load_config

PROMPT_BUCKET = 64  # prompts padded to a multiple: one compilation serves nearby lengths
TIMING_TOKENS = 8
# One compiled call makes every token: its KV cache holds every position, and nothing is printed
# until it ends. Past this many, a slip of the keyboard (100000) would run for hours unseen.
MAX_NEW_TOKENS = 16384
LONG_RUN_TOKENS = 1024  # from here, a line says that the call is under way


def run(args, overrides: list[str]) -> int:
    if not args.prompt:
        raise RunError("give at least one --prompt TEXT")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise RunError(
            f"--max-new-tokens={args.max_new_tokens} must be in [1, {MAX_NEW_TOKENS}] (one compiled call makes "
            "them all, its KV cache holding every position)"
        )
    if args.budget is not None and not args.budget > 0:
        raise RunError(f"--budget={args.budget} must be > 0")
    if args.unit is not None and args.budget is None:  # it would say nothing
        raise RunError(f"--unit {args.unit} is the unit of --budget, and none is given")
    args.unit = args.unit or "flops"
    cfg = load_config(Path(args.workdir).resolve())  # checked before the run loads
    if cfg.model.kind == "lm" and args.threshold is not None and not cfg.lm.exits:
        raise RunError(f"--threshold applies to a model with exits; {args.workdir} has none (lm.exits=false)")
    if cfg.model.kind == "lm" and args.experts is not None and not cfg.moe.enabled:
        raise RunError(f"--experts applies to a model with experts; {args.workdir} has none (moe.enabled=false)")
    if cfg.model.kind == "lm" and args.mod_bias is not None and not cfg.lm.mod_capacity > 0:
        raise RunError(f"--mod-bias applies to a model with MoD blocks; {args.workdir} has none (lm.mod_capacity=0)")
    trained = load_run(args.workdir, args.step, language_model=True)
    # the bytes as given: a byte-level model takes any, UTF-8 or not (os.fsencode undoes the
    # surrogates Python decodes undecodable argument bytes to)
    prompts = [byte_vocab.encode(os.fsencode(text), eos=False) for text in args.prompt]
    decoder = _decoder(trained, max(len(p) for p in prompts), args.max_new_tokens)
    threshold = _threshold(args, trained)
    knobs = dict(threshold=threshold, expert_cap=args.experts, temperature=args.temperature, top_p=args.top_p)
    if args.mod_bias is not None:
        knobs["mod_bias"] = args.mod_bias
    knobs.update(seed=[args.seed + i for i in range(len(prompts))])
    if args.budget is not None and args.unit == "flops":
        knobs["flops_budget"] = args.budget
    elif args.budget is not None and args.unit == "layers":
        # a whole number of blocks, checked with the other limits; a ceiling at or past the model's depth (inf
        # included) is its depth, as a FLOPs budget past a full pass is a full pass
        knobs["layer_cap"] = decoder.blocks if args.budget >= decoder.blocks else args.budget
        if args.budget > decoder.blocks:
            print(f"note: --budget {args.budget:g} layers is past this model's {decoder.blocks} blocks; it is "
                  f"{decoder.blocks}", file=sys.stderr)  # fmt: skip
    try:
        limits = decoder.limits(len(prompts), **knobs)  # checked before any timing for --unit ms
        if args.budget is not None and args.unit == "ms":
            knobs["layer_cap"] = _layer_cap_within_ms(decoder, prompts, knobs, args.budget / args.max_new_tokens)
            limits = decoder.limits(len(prompts), **knobs)
    except ValueError as e:  # named by the flag given, not the decoder's limit
        flags = {"expert_cap": "--experts", "threshold": "--threshold", "temperature": "--temperature"}
        flags |= {"top_p": "--top-p", "mod_bias": "--mod-bias", "flops_budget": "--budget"}
        named = f"--budget {args.budget:g} --unit layers: " if args.unit == "layers" and "layer_cap" in str(e) else ""
        for limit, flag in flags.items():
            if str(e).startswith(limit) and not named:
                named = f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: "
        raise RunError(named + str(e)) from None
    positions, window = max(len(p) for p in prompts) + args.max_new_tokens, trained.cfg.data.window
    if positions > window:  # rotary positions run on, but nothing past the window was trained
        print(
            f"note: up to {positions} positions (prompt and new tokens) pass the {window}-byte windows "
            "this model was trained on: text past them is extrapolation",
            file=sys.stderr,
        )
    if args.max_new_tokens >= LONG_RUN_TOKENS:
        print(
            f"note: generating up to {args.max_new_tokens} tokens in one compiled call: nothing prints until it ends",
            file=sys.stderr,
        )
    start, traces = time.perf_counter(), decoder.traces
    out = jax.tree.map(np.asarray, jax.block_until_ready(decoder(prompts, limits)))
    elapsed_ms = (time.perf_counter() - start) * 1e3
    compiled = ", compilation included" if decoder.traces > traces else ""
    rows = [_row(text, out, i) for i, text in enumerate(args.prompt)]
    if trained.cfg.lm.exits:  # the threshold the exits were taken at (--threshold, certified, or the config's)
        rows = [{**row, "exit_threshold": threshold} for row in rows]
    for row in rows:
        _print(row)
    budget = f" (budget {args.budget:g} {args.unit})" if args.budget is not None else ""
    if args.unit == "ms" and args.budget is not None and not compiled:  # the timing's prediction, checked
        budget += ": within it" if elapsed_ms <= args.budget else ": over it"
    print(f"{len(rows)} sequence(s) in {elapsed_ms:.1f} ms{compiled}{budget}")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {args.json}")
    return 0


def _decoder(trained, longest: int, new_tokens: int) -> G.Decoder:
    """The run's decoder with prompts padded to a multiple of PROMPT_BUCKET, or to the longest
    prompt exactly where the padding would pass a model's learned positions."""
    capacity = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
    try:
        return G.decoder_for_run(trained, prompt_capacity=capacity, new_capacity=new_tokens)
    except ValueError:
        pass
    try:
        return G.decoder_for_run(trained, prompt_capacity=longest, new_capacity=new_tokens)
    except ValueError as e:
        raise RunError(str(e)) from None


def _threshold(args, trained) -> float:
    """--threshold, else the run's certified one (adaptive calibrate-exits), else its config's."""
    if args.threshold is not None:
        return args.threshold
    if not trained.cfg.lm.exits:
        return exit_calibration.NO_EXITS  # no exits: never confident
    try:
        calibrated, note = exit_calibration.for_step(trained.workdir, trained.step)
    except ValueError as e:
        raise RunError(str(e)) from None
    if note:
        print(note, file=sys.stderr)
    if calibrated is not None:
        print(f"{exit_calibration.describe(calibrated)} (adaptive calibrate-exits)")
        return float(calibrated["threshold"])
    return trained.cfg.lm.exit_threshold


def _row(prompt: str, out: G.Generation, i: int) -> dict:
    n = int(out.count_B[i])
    tokens = out.tokens_BxM[i, :n]
    return {
        "prompt": os.fsencode(prompt).decode("utf-8", "replace"),
        "text": byte_vocab.decode(tokens).decode("utf-8", "replace"),
        "tokens": tokens.tolist(),
        "layers": out.layers_BxM[i, :n].tolist(),
        "experts": out.experts_BxM[i, :n].tolist(),
        "flops": out.flops_BxM[i, :n].tolist(),
        "prefill_flops": float(out.prefill_flops_B[i]),
        "decode_flops": float(out.flops_BxM[i, 1:n].sum()),
        "mean_layers": float(out.layers_BxM[i, :n].mean()),
        "stop": G.STOP_REASONS[int(out.stop_B[i])],
    }


def _print(row: dict) -> None:
    """The text, then each token's byte and depth in aligned columns."""
    print(f"{_printable(row['prompt'])}\u2502{_printable(row['text'])}")
    chars = [_shown(t) for t in row["tokens"]]
    width = max(len(c) for c in chars + ["9"])
    print("  token " + " ".join(c.rjust(width) for c in chars))
    print("  depth " + " ".join(str(int(d)).rjust(width) for d in row["layers"]))
    print(
        f"  {len(row['tokens'])} tokens, mean depth {row['mean_layers']:.2f}, "
        f"decode {row['decode_flops']:.3g} FLOPs, prefill {row['prefill_flops']:.3g}, stopped: {row['stop']}"
    )


def _printable(text: str) -> str:
    """Text as a terminal shows it safely: newlines and tabs kept, other control characters
    (which a byte-level model may emit) escaped."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _shown(token: int) -> str:
    """A token as one visible cell: spaces and control bytes escaped."""
    if token >= 256:
        return "<eos>" if token == byte_vocab.EOS else "<bos>"
    return "\u2423" if token == 32 else repr(chr(token))[1:-1]


def _layer_cap_within_ms(decoder: G.Decoder, prompts, knobs: dict, ms_per_token: float) -> int:
    """The deepest layer cap whose timed milliseconds per token fit `ms_per_token`: the compiled
    decoder is timed at every cap on TIMING_TOKENS tokens (median of 3, after a warm-up)."""
    batch, fitted, cap_1_ms = len(prompts), None, None
    short = dict(knobs, max_new_tokens=min(TIMING_TOKENS, decoder.new_capacity), threshold=2.0, temperature=0.0)
    for cap in range(1, decoder.blocks + 1):
        limits = decoder.limits(batch, **dict(short, layer_cap=cap))
        jax.block_until_ready(decoder(prompts, limits))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = jax.block_until_ready(decoder(prompts, limits))
            times.append((time.perf_counter() - start) * 1e3 / float(np.asarray(out.count_B).max()))
        per_token = sorted(times)[1]
        print(f"timed: layer cap {cap}: {per_token:.3f} ms per token", file=sys.stderr)
        if cap == 1:  # the least compute, however the timings of deeper caps fell
            cap_1_ms = per_token
        if per_token <= ms_per_token:
            fitted = cap
    if fitted is None:  # the request is served, at the least it can cost, and says it is over
        print(
            f"warning: no layer cap fits {ms_per_token:.4g} ms per token (layer cap 1, the least compute, took "
            f"{cap_1_ms:.3f} ms); generating at layer cap 1, over the budget",
            file=sys.stderr,
        )
        return 1
    return fitted
