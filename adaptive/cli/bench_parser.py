"""The parser of `adaptive bench`: one subcommand a benchmark (adaptive.bench has one module
each), its flags taken only as spelled."""

from __future__ import annotations

import argparse

from adaptive.cli.arg_types import (
    batch_sizes,
    json_output,
    nonnegative_int,
    positive_float,
    positive_int,
    positive_ints,
)


class _DefaultsShown(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already says what happens without
    the flag (a default of None: 'default: ...' in its own words) or the flag is a switch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text or "default" in text:
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Exact(argparse.ArgumentParser):
    """A parser that takes flags only as spelled (no prefixes: `--rou 5` is not `--rounds 5`), its
    help showing every flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


# `bench depth --kind transformer` builds model.num_heads' default (config_schema.ModelConfig; a test
# holds the two equal: the schema is not imported to build the parser)
TRANSFORMER_HEADS = 4
DEPTH_LADDER = (1, 2, 4, 8, 16)  # `bench depth`'s default depths: those up to --cap
JSON_HELP = "write the rows here as JSON (default: only the table)"


def add_bench(commands) -> None:
    """`adaptive bench KIND`: one benchmark a subcommand."""
    bench = commands.add_parser(
        "bench", help="benchmarks: side by side, medians after warm-up, table + JSON", allow_abbrev=False
    )
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=_Exact)
    _add_bench_depth(kinds)
    _add_bench_act_train(kinds)
    _add_bench_serve(kinds)
    _add_bench_serve_lm(kinds)
    _add_bench_moe(kinds)
    _add_bench_lm(kinds)
    _add_bench_generate(kinds)
    _add_bench_quant(kinds)


def _add_bench_generate(kinds) -> None:
    """`adaptive bench generate`: early-exit decoding against static models of its mean depth."""
    gen = kinds.add_parser("generate", help="early-exit decoding at mean depth d vs the static depth-d model")
    _add_lm_shape(gen, layers=4)
    gen.add_argument(
        "--depth",
        type=positive_float,
        default=None,
        help="the exit model's mean blocks per token (default: halfway between 1 and the blocks, 2.5 of 4)",
    )
    gen.add_argument("--batches", type=batch_sizes, default="1,8", help="comma-separated batch sizes")
    gen.add_argument("--new-tokens", type=positive_int, default=64, help="tokens generated per sequence (at least 2)")
    gen.add_argument("--repeats", type=positive_int, default=15, help="timed calls of each variant (medians)")
    gen.add_argument("--workdir", metavar="DIR", help="a trained exit model's run (default: fresh models)")
    gen.add_argument(
        "--thresholds",
        default="",
        help="with --workdir: time these comma-separated exit thresholds against every block instead (default: none)",
    )
    gen.add_argument(
        "--precisions",
        default="fp32",
        help="comma-separated weight precisions, timed side by side: fp32,bf16,int8,int4",
    )


def _add_bench_lm(kinds) -> None:
    """`adaptive bench lm`: MoD train steps and early exit against their dense and static twins."""
    lm = kinds.add_parser("lm", help="the language model: MoD train step and early exit vs full, dense and static")
    _add_lm_shape(lm, layers=8)
    lm.add_argument("--length", type=positive_int, default=256, help="tokens per sequence")
    lm.add_argument("--batch", type=positive_int, default=4, help="sequences per batch")
    lm.add_argument("--capacity", type=positive_float, default=0.125, help="MoD capacity on every other block")
    lm.add_argument(
        "--exit-depths",
        type=positive_ints,
        default=None,
        help="comma-separated exits every token leaves at (default: those of 1,2,4,6 below --layers)",
    )
    lm.add_argument("--repeats", type=positive_int, default=10, help="timed calls of each variant (medians)")


def _add_lm_shape(parser, layers: int) -> None:
    """The flags the language-model benchmarks share: where the rows go and the model's shape."""
    parser.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)
    parser.add_argument("--width", type=positive_int, default=128, help="the model's width (a multiple of --heads)")
    parser.add_argument("--layers", type=positive_int, default=layers, help="the model's blocks")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads per block")


def _add_bench_depth(kinds) -> None:
    """`adaptive bench depth`: ACT at realized depth d vs the static depth-d model."""
    depth = kinds.add_parser("depth", help="ACT inference at realized depth d vs the static depth-d model")
    depth.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)
    depth.add_argument("--kind", default="mlp", choices=("mlp", "rnn", "transformer"), help="the block")
    depth.add_argument(
        "--hidden",
        type=positive_int,
        default=512,
        help=f"the blocks' width (--kind transformer: a multiple of its {TRANSFORMER_HEADS} heads)",
    )
    depth.add_argument("--cap", type=positive_int, default=20, help="the ACT model's max_steps")
    depth.add_argument(
        "--depths",
        type=positive_ints,
        default=None,
        help=f"comma-separated realized depths, each once, at most --cap "
        f"(default: those of {','.join(map(str, DEPTH_LADDER))} up to --cap)",
    )
    depth.add_argument("--batches", type=batch_sizes, default="1,32", help="comma-separated batch sizes")
    depth.add_argument("--inputs", type=positive_int, default=16, help="input width (parity n)")
    depth.add_argument("--repeats", type=positive_int, default=300, help="timed calls of each variant (medians)")
    depth.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="time the mixed row this many times: medians over rounds, and a 95%% interval from 3 rounds on",
    )


def _add_bench_act_train(kinds) -> None:
    """`adaptive bench act-train`: the framework's ACT training loop vs a bare-JAX loop."""
    act = kinds.add_parser("act-train", help="the framework's ACT training loop vs a bare-JAX loop")
    act.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)
    act.add_argument("--n", type=positive_int, default=16, help="parity length (2 to 4096)")
    act.add_argument("--steps", type=positive_int, default=2000, help="timed train steps of each loop (at least 2)")


def _add_bench_serve(kinds) -> None:
    """`adaptive bench serve`: serving policies under the same open-loop load."""
    serve = kinds.add_parser(
        "serve", help="serving policies under the same open-loop load (effective accuracy, SLA violations, p99)"
    )
    serve.add_argument(
        "--artifact", required=True, metavar="ART", help="the adaptive classifier (a language model: bench serve-lm)"
    )
    serve.add_argument(
        "--small",
        metavar="ART2",
        help="the small (fallback) model (default: none: its policies left out; without it or operating points "
        "the controller runs alone)",
    )
    serve.add_argument("--sla-ms", type=positive_float, default=30.0, help="the latency SLA of every request")
    serve.add_argument("--rate", type=positive_float, help="base requests/s (default: what full depth sustains)")
    serve.add_argument("--duration", type=positive_float, default=6.0, help="seconds per pattern and repeat")
    serve.add_argument("--repeats", type=positive_int, default=3, help="runs of each pattern (mean and 95%% interval)")
    serve.add_argument("--tiny", action="store_true", help="1 s runs, no rate probe: a check that it runs")
    serve.add_argument("--fixed-budget", type=positive_int, default=3, help="steps of the fixed-budget policy")
    serve.add_argument("--max-batch", type=positive_int, default=16, help="the servers' largest batch")
    serve.add_argument(
        "--policies", default="", help="policy names to run, separated by ';' (names hold commas; default: all)"
    )
    serve.add_argument(
        "--out", default="runs/bench-serve", help="records and plots go in this folder (relative: to where it is run)"
    )
    serve.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)


def _add_bench_serve_lm(kinds) -> None:
    """`adaptive bench serve-lm`: generation serving policies under the same open-loop streaming load."""
    serve = kinds.add_parser(
        "serve-lm", help="generation serving policies under the same streaming load (TTFT, TPOT, goodput, agreement)"
    )
    serve.add_argument("--artifact", required=True, metavar="LM_ART", help="the language model (with exits)")
    serve.add_argument(
        "--small",
        metavar="LM_ART2",
        help="the small (fallback) language model (default: none; without it or --small-point the "
        "'controller + fallback' policy is left out)",
    )
    serve.add_argument(
        "--small-point",
        metavar="PRECISION,PRUNE",
        help="the fallback is this operating point of --small (or of --artifact without --small), e.g. int8,0.5 "
        "(default: none)",
    )
    serve.add_argument("--ttft-ms", type=positive_float, default=1000.0, help="the time-to-first-token SLA")
    serve.add_argument("--tpot-ms", type=positive_float, default=50.0, help="the time-per-output-token SLA")
    serve.add_argument(
        "--rate", type=positive_float, help="base requests/s (default: 0.6 of what full depth completes)"
    )
    serve.add_argument("--duration", type=positive_float, default=12.0, help="seconds per pattern and repeat")
    serve.add_argument("--repeats", type=positive_int, default=3, help="runs of each pattern (mean and 95%% interval)")
    serve.add_argument("--tiny", action="store_true", help="1 s runs, no capacity probe: a check that it runs")
    serve.add_argument("--policies", default="", help="comma-separated policy names to run (default: all)")
    serve.add_argument(
        "--out",
        default="runs/bench-serve-lm",
        help="/metrics excerpts go in this folder (relative: to where it is run)",
    )
    serve.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)


def _add_bench_moe(kinds) -> None:
    """`adaptive bench moe`: an MoE layer vs a dense FFN of the same active FLOPs."""
    moe = kinds.add_parser("moe", help="MoE layer vs a dense FFN of the same active FLOPs (fwd+bwd, inference)")
    moe.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)
    moe.add_argument("--tokens", type=positive_int, default=4096, help="tokens per call")
    moe.add_argument("--width", type=positive_int, default=256, help="the model width")
    moe.add_argument("--hidden", type=positive_int, default=512, help="each expert's hidden width")
    moe.add_argument("--experts", type=positive_int, default=8, help="experts in the layer")
    moe.add_argument(
        "-k",
        type=positive_int,
        default=2,
        help="experts per token in training; inference is timed at each k from 1 to this",
    )
    moe.add_argument("--capacity-factor", type=positive_float, default=1.25, help="each expert's capacity factor")
    moe.add_argument("--block-size", type=positive_int, default=128, help="rows per block of block dispatch")
    moe.add_argument("--repeats", type=positive_int, default=20, help="timed calls of each variant (medians)")


def _add_bench_quant(kinds) -> None:
    """`adaptive bench quant`: a trained run at each precision, calibrated on validation data."""
    quant = kinds.add_parser("quant", help="a trained run at fp32, bf16, int8 and int4 side by side")
    quant.add_argument("--workdir", required=True, help="a trained run (classifier or language model)")
    quant.add_argument("--precisions", default="fp32,bf16,int8,int4", help="comma-separated: fp32,bf16,int8,int4")
    quant.add_argument("--batches", type=batch_sizes, default="1,16,64", help="comma-separated batch sizes")
    quant.add_argument("--repeats", type=positive_int, default=30, help="timed calls of each variant (medians)")
    quant.add_argument("--prune", default="0", help="comma-separated shares of units and experts removed, e.g. 0,0.5")
    quant.add_argument("--fine-tune-steps", type=nonnegative_int, default=200, help="fine-tune steps after pruning")
    quant.add_argument(
        "--aware-steps", type=nonnegative_int, default=0, help="quantization-aware fine-tune steps (0: none)"
    )
    quant.add_argument(
        "--limit",
        type=positive_int,
        help="score on the validation split's first N examples (a language model: N windows spread over it; "
        "default: all of it)",
    )
    quant.add_argument("--json", type=json_output, metavar="OUT", help=JSON_HELP)
