"""`adaptive <command> ...`: the command line.

    adaptive train --config configs/parity.py:tiny --workdir DIR --config.train.steps=300

Config overrides are `--config.section.key=value` (or `--config.section.key value`). Errors
in user input exit with status 2 and one line on stderr naming what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptive", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a config in a workdir (resumes if it has a checkpoint)", allow_abbrev=False
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
    return parser


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
    from adaptive.train import train_and_evaluate

    cfg = config_lib.load(args.config, overrides)
    final = train_and_evaluate(cfg, args.workdir)
    shown = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items())
    print(f"done: {shown}\nworkdir: {os.path.abspath(args.workdir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    _quiet_libraries()

    from adaptive.checkpoint import CheckpointError
    from adaptive.config import ConfigError
    from adaptive.train import Interrupted, TrainingError

    try:
        return {"train": _train}[args.command](args, overrides)
    except ConfigError as e:
        print(f"adaptive: error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, CheckpointError) as e:
        print(f"adaptive: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"adaptive: {e}", file=sys.stderr)
        return 128 + 15  # the shell's code for "terminated by SIGTERM", after a clean save


if __name__ == "__main__":
    sys.exit(main())
