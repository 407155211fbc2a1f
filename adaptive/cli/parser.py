"""The argument parser of `adaptive`: every command and its flags, one function a command
(the handlers are in cli/main.py)."""

from __future__ import annotations

import argparse

from adaptive.cli.arg_types import (
    batch_sizes,
    device_ids,
    image_file,
    nonnegative_float,
    output_file,
    positive_int,
)
from adaptive.cli.bench_parser import add_bench


def refuse_flags_of_the_other_kind(args, minimal: list[str], names: tuple[str, ...], applies_to: str, is_: str):
    """Raises a one-line ConfigError when one of the flags `names` was set away from its default
    (parsing `minimal`, the command's required flags with placeholder values, gives the
    defaults): a flag that only applies to the other kind of model must not be silently dropped.
    A flag given at its default value changes nothing, and passes."""
    from adaptive.config import ConfigError

    defaults = build_parser().parse_args(minimal)
    for name in names:
        if getattr(args, name) != getattr(defaults, name):
            raise ConfigError(f"--{name.replace('_', '-')} applies to {applies_to}; {is_}")


OVERRIDES = (
    "Any value of the config is overridden with --config.KEY=VALUE, e.g. --config.train.steps=300 "
    "--config.model.hidden=64; an unknown key or a bad value is a one-line error."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive",
        description="Train budget-aligned adaptive models and run them under hard budgets.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_eval(commands)
    _add_export(commands)
    _add_serve(commands)
    _add_sweep(commands)
    _add_reproduce(commands)
    _add_report(commands)
    _add_calibrate(commands)
    _add_generate(commands)
    _add_calibrate_exits(commands)
    add_bench(commands)
    _name_the_parsers(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args`, with an unknown flag refused by the command it was given to (its
    usage line, not the top level's `adaptive [-h] COMMAND ...`)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _name_the_parsers(parser: argparse.ArgumentParser) -> None:
    """Each command's parser as its own default `command_parser` (a nested one, e.g. `bench quant`,
    overrides its parent's: argparse applies the innermost's defaults last)."""
    for action in parser._actions:
        for sub in action.choices.values() if isinstance(action, argparse._SubParsersAction) else ():
            sub.set_defaults(command_parser=sub)
            _name_the_parsers(sub)


def _add_train(commands) -> None:
    """`adaptive train`: a config trained in a workdir."""
    train = commands.add_parser(
        "train",
        help="train a config in a workdir (resumes if it has a checkpoint)",
        epilog=OVERRIDES,
        allow_abbrev=False,
    )
    train.add_argument(
        "--config",
        required=True,
        metavar="FILE[:ARG]",
        help="a config file with get_config(arg), e.g. configs/parity.py:tiny",
    )
    train.add_argument(
        "--workdir", required=True, metavar="DIR", help="where metrics.jsonl, config.json, run.json and checkpoints/ go"
    )


def _add_eval(commands) -> None:
    """`adaptive eval`: a trained run scored on a split."""
    evaluate = commands.add_parser(
        "eval", help="score a trained run on a split (by the inference path)", allow_abbrev=False
    )
    evaluate.add_argument("--workdir", required=True, metavar="DIR")
    evaluate.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    evaluate.add_argument("--split", choices=("train", "validation", "test"), help="default: the config's eval_split")
    evaluate.add_argument(
        "--budget", type=int, help="score under this per-example step budget only (default: the full report)"
    )
    evaluate.add_argument(
        "--baseline", action="append", default=[], metavar="DIR", help="a static run to compare with (repeatable)"
    )
    evaluate.add_argument(
        "--latency-batch", type=positive_int, metavar="B", help="also time the compiled predictor on batches of B"
    )
    evaluate.add_argument(
        "--points", metavar="ART", help="score and plot this run's exported operating points (precision, pruning)"
    )
    evaluate.add_argument(
        "--halt",
        choices=("threshold", "sample"),
        help="PonderNet runs: halt by the cumulative-probability threshold or by sampling (default: as trained)",
    )


def _add_export(commands) -> None:
    """`adaptive export`: a run written as a jax.export artifact."""
    export = commands.add_parser(
        "export", help="write a run as a jax.export artifact (plus meta.json), verified", allow_abbrev=False
    )
    export.add_argument("--workdir", required=True, metavar="DIR")
    export.add_argument("--out", required=True, metavar="ART", help="the artifact folder to write")
    export.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    export.add_argument(
        "--force", action="store_true", help="replace a previous artifact at ART (never a folder with other files)"
    )
    export.add_argument(
        "--prompt-capacity", type=int, default=64, metavar="P", help="language models: the longest prompt (bytes + BOS)"
    )
    export.add_argument("--new-tokens", type=int, default=64, metavar="M", help="language models: the most new tokens")
    export.add_argument(
        "--slots", type=int, default=8, metavar="S", help="language models: decode slots `adaptive serve` batches in"
    )
    export.add_argument("--precision", default="fp32", help="operating points' precisions: fp32,bf16,int8,int4")
    export.add_argument("--prune", default="0", help="operating points' pruned shares of units and experts, e.g. 0,0.5")
    export.add_argument("--fine-tune-steps", type=int, default=200, help="fine-tune steps after pruning")
    export.add_argument("--aware-steps", type=int, default=0, help="quantization-aware fine-tune steps (0: none)")
    export.add_argument("--points-batch", type=int, default=16, help="batch the operating points are timed at")


def _add_serve(commands) -> None:
    """`adaptive serve`: an artifact served over HTTP."""
    serve = commands.add_parser("serve", help="serve an artifact over HTTP under a latency SLA", allow_abbrev=False)
    serve.add_argument("--artifact", required=True, metavar="ART")
    serve.add_argument("--fallback", metavar="ART2", help="a smaller model for the degradation ladder")
    serve.add_argument("--point", metavar="PRECISION,PRUNE", help="serve this operating point of ART, e.g. int8,0")
    serve.add_argument(
        "--fallback-point",
        action="append",
        metavar="PRECISION,PRUNE",
        help="a fallback rung at this operating point of ART2 (default: of ART), e.g. int8,0.5; classifiers: "
        "repeat it for a ladder of several, or 'all' for every point that fits (the controller picks one a batch); "
        "language models: one fallback point",
    )
    serve.add_argument("--sla-ms", type=float, default=20.0, help="classifiers: the latency SLA (default 20)")
    serve.add_argument(
        "--ttft-ms", type=float, default=1000.0, help="language models: the time-to-first-token SLA (default 1000)"
    )
    serve.add_argument(
        "--tpot-ms", type=float, default=100.0, help="language models: the time-per-output-token SLA (default 100)"
    )
    serve.add_argument(
        "--max-waiting", type=int, default=64, metavar="N", help="language models: waiting for a slot; past it 503"
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port (the one bound is printed)")
    serve.add_argument(
        "--policy",
        choices=("adaptive", "static", "shed"),
        default="adaptive",
        help="adaptive: the controller; static: every request at its budget, queued; shed: static, and a request "
        "that cannot finish within the deadline at the measured service time is rejected",
    )
    serve.add_argument("--max-batch", type=int, default=32)
    serve.add_argument("--default-budget", type=int, metavar="STEPS", help="for requests without one (default: cap)")
    serve.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.005,
        metavar="T",
        help="validation accuracy a cheaper operating point may give up against the budget asked for "
        "(artifacts with an accuracy table; default 0.005; 0: only as accurate)",
    )
    serve.add_argument(
        "--read-timeout-s", type=float, default=5.0, metavar="S", help="a request body late by more: 408 (default 5)"
    )
    serve.add_argument(
        "--max-connections", type=int, default=1000, metavar="N", help="open at once; past it 503 (default 1000)"
    )
    serve.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        metavar="S",
        help="a connection without a whole request's headers for this long is closed (default 60)",
    )


def _add_sweep(commands) -> None:
    """`adaptive sweep`: every point of a config's get_sweep() trained."""
    sweep = commands.add_parser(
        "sweep",
        help="train every point of a config's get_sweep(), resumably, N at a time",
        epilog=OVERRIDES.replace("the config", "every point's config"),
        allow_abbrev=False,
    )
    sweep.add_argument("--config", required=True, metavar="FILE[:ARG]", help="a config file with get_sweep(arg)")
    sweep.add_argument("--workdir", required=True, metavar="DIR", help="points go to DIR/<index>-<slug>")
    sweep.add_argument(
        "--parallel", type=positive_int, default=1, metavar="N", help="points trained at once (default 1)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the points and their status; run nothing")
    sweep.add_argument("--point", type=int, metavar="I", help="train only point I (what wandb agents run)")
    sweep.add_argument("--wandb", action="store_true", help="also write DIR/sweep.yaml for wandb sweep/agent")
    sweep.add_argument(
        "--devices",
        type=device_ids,
        default=[],
        metavar="IDS",
        help="accelerator ids to share out, e.g. 0,1,2,3 (each running point sees only its own)",
    )
    sweep.add_argument(
        "--devices-per-point",
        type=positive_int,
        metavar="K",
        help="each running point gets K of --devices (default: as many as --parallel leaves each)",
    )


def _add_reproduce(commands) -> None:
    """`adaptive reproduce`: one experiment end to end."""
    reproduce = commands.add_parser(
        "reproduce",
        help="run one experiment end to end and check its README's claims",
        epilog=OVERRIDES.replace("the config", "the config of each of its sweeps"),
        allow_abbrev=False,
    )
    reproduce.add_argument("name", help="a folder of experiments/, e.g. act_parity")
    reproduce.add_argument("--tiny", action="store_true", help="the minutes-scale version and its claims")
    reproduce.add_argument("--workdir", metavar="DIR", help="default: runs/reproduce/NAME[-tiny]")
    reproduce.add_argument("--parallel", type=positive_int, default=1, metavar="N")


def _add_report(commands) -> None:
    """`adaptive report`: a table over finished runs."""
    report = commands.add_parser("report", help="a table (and plots) over finished runs", allow_abbrev=False)
    report.add_argument("workdirs", nargs="+", metavar="DIR")
    report.add_argument(
        "--split",
        action="append",
        choices=("train", "validation", "test"),
        help="also evaluate on this split (repeatable)",
    )
    report.add_argument("--plot", type=image_file, metavar="PNG", help="draw compute (and accuracy) vs difficulty here")
    report.add_argument("--markdown", type=output_file, metavar="MD", help="write the table as markdown here")
    report.add_argument("--usage", type=image_file, metavar="PNG", help="draw MoE expert usage over training here")
    report.add_argument(
        "--pareto", type=image_file, metavar="PNG", help="draw accuracy vs compute (adaptive and static) here"
    )


def _add_calibrate(commands) -> None:
    """`adaptive calibrate`: a run's inference timed, its cost model fitted."""
    calibrate = commands.add_parser(
        "calibrate", help="time a run's inference and fit DIR/cost_model.json", allow_abbrev=False
    )
    calibrate.add_argument("--workdir", required=True, metavar="DIR")
    calibrate.add_argument("--batches", type=batch_sizes, default=[1, 8, 32], help="comma-separated batch sizes")
    calibrate.add_argument("--repeats", type=positive_int, default=30)
    calibrate.add_argument(
        "--price-per-hour", type=nonnegative_float, default=3.0, help="machine price, money per hour (default 3.0)"
    )
    calibrate.add_argument(
        "--power-watts",
        type=nonnegative_float,
        default=30.0,
        help="machine power draw while serving, watts (default 30.0)",
    )


def _add_generate(commands) -> None:
    """`adaptive generate`: text from a language model's run under a budget."""
    gen = commands.add_parser(
        "generate", help="generate text from a language model under a budget (KV-cached)", allow_abbrev=False
    )
    gen.add_argument("--workdir", required=True, metavar="DIR")
    gen.add_argument("--prompt", action="append", metavar="TEXT", help="repeatable: one sequence of the batch each")
    gen.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="new tokens per sequence, 1 to 16384 (default 64)"
    )
    gen.add_argument("--budget", type=float, metavar="B", help="in --unit; default: none")
    gen.add_argument(
        "--unit",
        choices=("flops", "layers", "ms"),
        help="of --budget (default flops); flops: for the new tokens after the first, each token's attention "
        "priced over the whole KV cache (the longest prompt padded to a multiple of 64, plus --max-new-tokens "
        "positions, as XLA runs it: a larger cache costs more per token, so a served artifact or eval, with "
        "other capacities, prices a token differently); layers: per token; ms: for the new tokens",
    )
    gen.add_argument(
        "--threshold", type=float, help="exit confidence threshold (default: the certified one, else lm.exit_threshold)"
    )
    gen.add_argument("--experts", type=int, metavar="K", help="the most experts a token may use in each MoE block")
    gen.add_argument(
        "--mod-bias", type=float, metavar="B", help="added to MoD routers' scores: > 0 runs MoD blocks on fewer tokens"
    )
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0, help="sampling seed of the first prompt (the next get +1, ...)")
    gen.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    gen.add_argument(
        "--json",
        type=output_file,
        metavar="OUT",
        help="one JSON row per prompt: text, per-token layers, experts, FLOPs (the first token's are part of "
        "prefill_flops; decode_flops sums the others)",
    )


def _add_calibrate_exits(commands) -> None:
    """`adaptive calibrate-exits`: a certified exit threshold for a language model's run."""
    cal = commands.add_parser(
        "calibrate-exits",
        help="certify an exit threshold (Learn-then-Test): exits agree with the full model on >= 1 - delta of tokens",
        allow_abbrev=False,
    )
    cal.add_argument("--workdir", required=True, metavar="DIR")
    cal.add_argument("--delta", type=float, default=0.1, help="tolerated share of tokens that disagree (default 0.1)")
    cal.add_argument(
        "--epsilon", type=float, default=0.1, help="tolerated probability that the guarantee fails (default 0.1)"
    )
    cal.add_argument("--windows", type=int, default=512, help="validation windows to calibrate on (default 512)")
    cal.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
