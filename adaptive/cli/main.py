"""`adaptive <command> ...`: the command line.

    adaptive train --config configs/parity.py:tiny --workdir DIR --config.train.steps=300

Config overrides are `--config.section.key=value` (or `--config.section.key value`), for the
commands that build a config (`TAKES_OVERRIDES`); any other command refuses them rather than run
without them. Errors in user input exit with status 2 and one line on stderr naming what is wrong.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from adaptive.cli import bench_command
from adaptive.cli.parser import build_parser, parse

# The commands that build a config from --config overrides (reproduce: for its sweeps' points);
# the others read a run's saved config or an artifact, and an override would be ignored.
TAKES_OVERRIDES = ("train", "sweep", "reproduce")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` overrides from the ordinary arguments."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv):
            overrides.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        (overrides if arg.startswith("--config.") else rest).append(arg)
        i += 1
    return rest, overrides


def _given_once(overrides: list[str]) -> None:
    """A key overridden twice with two values is refused: the last would win silently, which is
    seldom meant (the same value twice says one thing)."""
    from adaptive.config import ConfigError, override_key

    seen: dict[str, str] = {}
    for item in overrides:
        key, value = override_key(item)
        if key in seen and seen[key] != value:
            raise ConfigError(f"--config.{key} is given twice ({seen[key]}, then {value}); give it once")
        seen[key] = value


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("absl", "orbax", "jax", "grain", "tensorflow_datasets", "etils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def _train(args, overrides: list[str]) -> int:
    from adaptive import config as config_lib
    from adaptive.training.train import train_and_evaluate

    cfg = config_lib.load(args.config, overrides)
    final = train_and_evaluate(cfg, args.workdir)
    print(_summary_line(final))
    print(f"workdir: {os.path.abspath(args.workdir)}")
    return 0


def _summary_line(metrics: dict) -> str:
    experts = metrics.get("eval/experts_mean", 0.0)
    if "eval/bits_per_byte" in metrics:  # a language model: per token
        return (
            f"eval bits per byte {metrics['eval/bits_per_byte']:.4f} | next-token accuracy "
            f"{metrics['eval/accuracy']:.4f} | blocks per token {metrics['eval/steps_mean']:.2f} | "
            + (f"expert applications per token {experts:.2f} (over its blocks) | " if experts else "")
            + f"{metrics['eval/examples']} tokens"
        )
    return (
        f"eval accuracy {metrics['eval/accuracy']:.4f} | mean steps {metrics['eval/steps_mean']:.2f} "
        f"(max {metrics['eval/steps_max']}) | "
        + (f"expert applications {experts:.2f} (over tokens and steps) | " if experts else "")
        + f"{metrics['eval/examples']} examples"
    )


def _eval(args, overrides: list[str]) -> int:
    from pathlib import Path

    from adaptive.cli import eval_reports
    from adaptive.evaluation.budgeted_eval import evaluate_run
    from adaptive.workdir.config_file import RunError, load_config, refuse_other_task
    from adaptive.workdir.runinfo import check_writable_folder

    cfg = load_config(Path(args.workdir).resolve())
    check_writable_folder(Path(args.workdir) / "eval")  # before the evaluation, whose results go there
    if cfg.model.kind == "lm":
        return _eval_lm(args)
    for baseline in args.baseline:  # checked before the evaluation, which takes a while
        static = load_config(Path(baseline).resolve())
        if static.model.kind == "lm" or static.halting.policy != "none":
            what = "a language model" if static.model.kind == "lm" else f"halting.policy={static.halting.policy!r}"
            raise RunError(f"--baseline {baseline} must be a static classifier run; it is {what}")
        refuse_other_task(f"--baseline {baseline}", static, args.workdir, cfg, args.split or cfg.data.eval_split)
    if args.points:  # likewise: a language model's artifact, a damaged meta.json, another run's
        from adaptive.inference.artifact_meta import read_meta
        from adaptive.workdir.checkpoint import newest_step
        from adaptive.workdir.config_file import checkpoint_folder

        points_meta = read_meta(Path(args.points))
        if not points_meta.get("operating_points"):
            raise RunError(f"--points {args.points} has no operating points: export it with --precision and --prune")
        source = points_meta.get("source") or {}
        if Path(str(source.get("workdir", ""))).resolve() != Path(args.workdir).resolve():
            raise RunError(f"--points {args.points} was exported from {source.get('workdir')}, not from {args.workdir}")
        step = args.step if args.step is not None else newest_step(checkpoint_folder(Path(args.workdir)))
        if step is not None and source.get("step") != step:
            raise RunError(
                f"--points {args.points} was exported at step {source.get('step')} of {args.workdir}, which is "
                f"evaluated at step {step}: export that step again, or give --step {source.get('step')}"
            )

    metrics, path = evaluate_run(
        args.workdir,
        split=args.split,
        step=args.step,
        budget=args.budget,
        latency_batch=args.latency_batch,
        halt=args.halt,
    )
    halting = f" halting {args.halt}" if args.halt else ""
    print(
        f"step {metrics['step']} split {metrics['split']} budget {metrics['budget']}{halting}: {_summary_line(metrics)}"
    )
    # the full report reads the run as trained (sampled halting has no per-budget trajectory)
    full_report = args.budget is None and args.halt is None
    if full_report and metrics["policy"] != "none":
        eval_reports.print_compute_report(args.workdir, metrics, args.baseline, args.points)
    elif args.points:
        eval_reports.print_points_report(args.workdir, metrics, args.points)
    if full_report and metrics["policy"] == "none" and cfg.moe.enabled and cfg.moe.k > 1:
        eval_reports.print_expert_budgets(args.workdir, metrics)
    elif full_report and metrics["policy"] == "none":  # said, where the full report would come
        print(f"a static model has one step budget (all its {metrics['budget']} steps): no accuracy-vs-budget report")
    if args.baseline and not (full_report and metrics["policy"] != "none"):
        print("--baseline is compared in the full report: drop --budget, or evaluate an adaptive run")
    if "latency/p50_ms" in metrics:
        print(
            f"latency at batch {metrics['latency/batch']} over {metrics['latency/batches']} calls "
            f"({metrics['latency/distinct_batches']} distinct batches): "
            f"p50 {metrics['latency/p50_ms']:.3f} ms, p95 {metrics['latency/p95_ms']:.3f} ms, "
            f"p99 {metrics['latency/p99_ms']:.3f} ms (mean steps {metrics['latency/steps_mean']:.2f})"
        )
        if "latency/predicted_p50_ms" in metrics:
            print(
                f"the cost model predicted p50 {metrics['latency/predicted_p50_ms']:.3f} ms, "
                f"p99 {metrics['latency/predicted_p99_ms']:.3f} ms for the same batches"
            )
            if warning := latency_gap_warning(metrics["latency/p50_ms"], metrics["latency/predicted_p50_ms"]):
                print(warning, file=sys.stderr)
        elif "latency/unpredicted" in metrics:
            print(f"note: {metrics['latency/unpredicted']}")
        if "latency/sla_ms" in metrics:
            print(
                f"{100 * metrics['latency/over_sla_fraction']:.1f}% of calls over the "
                f"{metrics['latency/sla_ms']:g} ms request budget"
            )
    print(f"wrote {path}")
    return 0


def latency_gap_warning(measured_ms: float, predicted_ms: float) -> str | None:
    """A warning where a measured median latency is off the cost model's by more than 2x either
    way: every budget priced through the model is off by as much."""
    off = measured_ms / max(predicted_ms, 1e-12)
    if 0.5 <= off <= 2.0:
        return None
    return (
        f"warning: measured p50 is {off:.2g}x the cost model's: it was calibrated on another machine or under "
        "another load; `adaptive calibrate` here refits it"
    )


def _eval_lm(args) -> int:
    """`adaptive eval` of a language model: bits per byte at every exit threshold, and where the
    blocks go."""
    from adaptive.evaluation.lm_report import evaluate_lm
    from adaptive.workdir.config_file import RunError

    for flag, value in (("--budget", args.budget), ("--halt", args.halt), ("--latency-batch", args.latency_batch)):
        if value is not None:
            raise RunError(f"{flag} applies to classifiers; {args.workdir} holds a language model")
    if args.baseline:
        raise RunError(f"--baseline applies to classifiers; {args.workdir} holds a language model")
    report, path, plots = evaluate_lm(args.workdir, split=args.split, step=args.step, points=args.points)
    for p in report["points"]:
        front = " (Pareto)" if p["pareto"] else ""
        print(
            f"{p['label']}: bits per byte {p['bits_per_byte']:.4f}, next-token accuracy {p['accuracy']:.4f}, "
            f"blocks per token {p['blocks_mean']:.2f}, FLOPs per token {p['flops_per_token']:,.0f}{front}"
        )
    for p in report.get("operating_points", []):
        front = " (Pareto in ms)" if p["pareto_ms_per_token"] else ""
        print(
            f"point {p['label']}: validation bits per byte {p['validation_bits_per_byte']:.4f}, FLOPs per token "
            f"{p['flops_per_token']:,.0f} (every block), memory {p['memory_mb']:.3f} MB, "
            f"{p['ms_per_token']:.3f} ms per token at batch {p['latency_batch']}{front}"
        )
    print(f"wrote {path}" + "".join(f", {p}" for p in plots))
    return 0


def _calibrate(args, overrides: list[str]) -> int:
    from adaptive.evaluation.calibrate import calibrate

    _, path = calibrate(
        args.workdir,
        batches=args.batches,
        repeats=args.repeats,
        price_per_hour=args.price_per_hour,
        power_watts=args.power_watts,
    )
    print(f"wrote {path}")
    return 0


def _sweep(args, overrides: list[str]) -> int:
    from adaptive.cli.sweep_command import run

    return run(args, overrides)


def _serve(args, overrides: list[str]) -> int:
    from adaptive.cli.serve_command import run

    return run(args)


def _export(args, overrides: list[str]) -> int:
    from adaptive.cli.export_command import run

    return run(args)


def _reproduce(args, overrides: list[str]) -> int:
    from adaptive.experiments.reproduce import reproduce

    return reproduce(args.name, tiny=args.tiny, workdir=args.workdir, parallel=args.parallel, overrides=overrides)


def _report(args, overrides: list[str]) -> int:
    from adaptive.evaluation.report import report

    report(
        args.workdirs,
        splits=args.split or [],
        plot=args.plot,
        markdown=args.markdown,
        usage=args.usage,
        pareto=args.pareto,
    )
    return 0


def _generate(args, overrides: list[str]) -> int:
    from adaptive.cli import generate_command  # jax loads only for the commands that need it

    return generate_command.run(args, overrides)


def _calibrate_exits(args, overrides: list[str]) -> int:
    from adaptive.cli import calibrate_exits_command

    return calibrate_exits_command.run(args, overrides)


def redeliver_swallowed_interrupts() -> None:
    """Makes a Ctrl-C that Python would drop arrive again. A KeyboardInterrupt raised inside a
    garbage-collector callback (JAX registers one, run at every collection while importing,
    tracing and compiling) or a `__del__` cannot propagate: Python reports it as "Exception
    ignored" and carries on, so a Ctrl-C could be lost and a run go on to its end. Each one so
    reported is delivered again 10 ms later, to the SIGINT handler then in place (a training
    loop's saves and stops): delivered from the hook itself, it would be raised inside the hook
    and dropped too, and one that lands in a callback again is dropped, reported and redelivered."""
    previous = sys.unraisablehook
    if getattr(previous, "redelivers_interrupts", False):  # main() called again in one process
        return

    def again(signum, frame) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        elif handler == signal.SIG_DFL:  # a second Ctrl-C's handler after a first was recorded
            signal.raise_signal(signal.SIGINT)

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            signal.signal(signal.SIGALRM, again)
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        previous(unraisable)

    hook.redelivers_interrupts = True
    sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    redeliver_swallowed_interrupts()
    try:
        return _run_command(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C where no handler saves (imports, before training, other commands)
        print("adaptive: interrupted", file=sys.stderr)
        return 128 + 2
    finally:  # a redelivered Ctrl-C still pending when the command is done: it finished, so is not killed
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_command(argv: list[str]) -> int:
    rest, overrides = _split_overrides(argv)
    args = parse(build_parser(), rest)
    _quiet_libraries()

    from adaptive.compute.costmodel import CostModelError
    from adaptive.config import ConfigError
    from adaptive.experiments.sweep import SweepInterrupted
    from adaptive.inference.export import ArtifactError
    from adaptive.nn.prune import NothingToPrune
    from adaptive.training.train import Interrupted, TrainingError
    from adaptive.workdir.checkpoint import CheckpointError
    from adaptive.workdir.config_file import RunError
    from adaptive.workdir.runinfo import BUSY_EXIT, WorkdirBusy, WorkdirError

    try:
        if overrides and args.command not in TAKES_OVERRIDES:
            raise ConfigError(
                f"adaptive {args.command} takes no --config overrides (got {overrides[0]}); "
                f"they apply to {', '.join(TAKES_OVERRIDES)}"
            )
        _given_once(overrides)
        commands = {
            "train": _train,
            "eval": _eval,
            "export": _export,
            "serve": _serve,
            "sweep": _sweep,
            "reproduce": _reproduce,
            "report": _report,
            "calibrate": _calibrate,
            "generate": _generate,
            "calibrate-exits": _calibrate_exits,
            "bench": bench_command.run,
        }
        return commands[args.command](args, overrides)
    except (ConfigError, RunError, CostModelError, ArtifactError, NothingToPrune) as e:
        print(f"adaptive: error: {e}", file=sys.stderr)
        return 2
    except WorkdirBusy as e:
        print(f"adaptive: error: {e}", file=sys.stderr)
        return BUSY_EXIT
    except (TrainingError, CheckpointError, WorkdirError) as e:
        print(f"adaptive: error: {e}", file=sys.stderr)
        return 1
    except (Interrupted, SweepInterrupted) as e:
        print(f"adaptive: {e}", file=sys.stderr)
        return 128 + getattr(e, "signum", 15)  # the shell's code for the signal (143, 130), after a clean save
    except Exception as e:  # out of memory (a capacity or batch too large): its line, not a traceback
        first = str(e).strip().split("\n", 1)[0]
        if isinstance(e, MemoryError):  # the host's (numpy's allocation), not XLA's
            first = f"out of memory: {first or 'an allocation failed'}"
        elif "RESOURCE_EXHAUSTED" not in first:
            raise
        hint = " (ask for less: a smaller batch, capacity or model)" if "memory" in first.lower() else ""
        print(f"adaptive: error: {first}{hint}", file=sys.stderr)
        return 1
