"""`adaptive bench`: which benchmark runs, with which flags (adaptive.bench has one module each)."""

from __future__ import annotations

from adaptive.cli.arg_types import comma_entries


def run(args, overrides: list[str]) -> int:
    """`adaptive bench KIND ...`: each benchmark's own module, given the parsed flags (each
    already a number in its range; what one flag asks of another is checked here, in one line)."""
    _check_flags_against_each_other(args)
    if args.bench == "depth":
        from adaptive.bench import depth

        depth.run(
            kind=args.kind,
            hidden=args.hidden,
            cap=args.cap,
            depths=args.depths,
            batches=args.batches,
            repeats=args.repeats,
            n_in=args.inputs,
            json_out=args.json,
            rounds=args.rounds,
        )
    elif args.bench == "serve":
        from adaptive.bench import serve

        serve.run(
            args.artifact,
            args.small,
            sla_ms=args.sla_ms,
            rate=args.rate,
            duration=args.duration,
            fixed_budget=args.fixed_budget,
            max_batch=args.max_batch,
            out_dir=args.out,
            json_out=args.json,
            repeats=args.repeats,
            tiny=args.tiny,
            policies=[p.strip() for p in args.policies.split(";") if p.strip()] or None,
        )
    elif args.bench == "serve-lm":
        from adaptive.bench import serve_lm
        from adaptive.config import ConfigError

        if args.small_point:  # checked now, in one line, rather than when its server fails to start
            from adaptive.cli.serve_command import check_point, point_flag, points_of_artifact

            source = args.small or args.artifact
            asked = point_flag("--small-point", args.small_point)
            check_point("--small-point", asked, source, points_of_artifact(source, None))
            if not args.small and asked == ("fp32", 0.0):
                raise ConfigError("--small-point fp32,0 is the primary itself; pick a smaller point")
        serve_lm.run(
            args.artifact,
            args.small,
            small_point=args.small_point,
            ttft_ms=args.ttft_ms,
            tpot_ms=args.tpot_ms,
            rate=args.rate,
            duration=args.duration,
            repeats=args.repeats,
            out_dir=args.out,
            json_out=args.json,
            tiny=args.tiny,
            only=[p for p in args.policies.split(",") if p] or None,
        )
    elif args.bench == "lm":
        from adaptive.bench import lm

        lm.run(
            width=args.width,
            layers=args.layers,
            heads=args.heads,
            length=args.length,
            batch=args.batch,
            capacity=args.capacity,
            exit_depths=args.exit_depths,
            repeats=args.repeats,
            json_out=args.json,
        )
    elif args.bench == "generate":
        from adaptive.bench import generate

        generate.run(
            width=args.width,
            layers=args.layers,
            heads=args.heads,
            depth=args.depth,
            batches=tuple(args.batches),
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            workdir=args.workdir,
            thresholds=tuple(float(v) for v in args.thresholds.split(",") if v),
            precisions=tuple(_precisions(args.precisions)),
            json_out=args.json,
        )
    elif args.bench == "moe":
        from adaptive.bench import moe

        moe.run(
            tokens=args.tokens,
            width=args.width,
            hidden=args.hidden,
            experts=args.experts,
            k=args.k,
            capacity_factor=args.capacity_factor,
            block_size=args.block_size,
            repeats=args.repeats,
            json_out=args.json,
        )
    elif args.bench == "quant":
        from adaptive.bench import quant
        from adaptive.config import ConfigError

        precisions = _precisions(args.precisions)
        batches = args.batches
        prune_entries = comma_entries("--prune", args.prune)
        try:
            prunes = tuple(float(v) for v in prune_entries)
        except ValueError:
            raise ConfigError(f"--prune {args.prune!r}: give shares in [0, 1), comma-separated") from None
        from adaptive.evaluation.operating_points import check_points

        if not prunes:
            raise ConfigError("--prune: give at least one share in [0, 1), e.g. 0 or 0,0.5")
        try:
            check_points(precisions, list(prunes))  # whole percents, each once: variants are named by them
        except ValueError as e:
            raise ConfigError(str(e)) from None
        quant.run(
            args.workdir,
            precisions,
            batches,
            prunes=prunes,
            fine_tune_steps=args.fine_tune_steps,
            aware_steps=args.aware_steps,
            repeats=args.repeats,
            limit=args.limit,
            json_out=args.json,
        )
    else:
        from adaptive.bench import act_train

        act_train.run(n=args.n, steps=args.steps, json_out=args.json)
    return 0


def _check_flags_against_each_other(args) -> None:
    """One flag's own value first (so that a bad one is named, not a default derived from
    another), then the defaults that follow other flags, then what flags ask of each other."""
    from adaptive.cli.bench_parser import DEPTH_LADDER, TRANSFORMER_HEADS
    from adaptive.config import ConfigError

    if getattr(args, "precisions", None) is not None:
        _precisions(args.precisions)
    if args.bench == "act-train":
        _check_parity_length(args.n)
    if args.bench == "lm" and args.exit_depths is None:  # the default: the usual depths this model has
        args.exit_depths = [d for d in (1, 2, 4, 6) if d < args.layers]
    if args.bench == "depth" and args.depths is None:  # the default: the ladder's depths up to the cap
        args.depths = [d for d in DEPTH_LADDER if d <= args.cap]
    if args.bench == "generate" and args.depth is None and args.workdir is None:  # a run's: from its blocks
        args.depth = (1 + args.layers) / 2
    problem = None
    if args.bench == "depth" and max(args.depths) > args.cap:  # (a depth given twice: refused as parsed)
        problem = f"--depths {max(args.depths)} is past --cap {args.cap}"
    elif args.bench == "depth" and args.kind == "transformer" and args.hidden % TRANSFORMER_HEADS:
        problem = f"--hidden {args.hidden} is not a multiple of the transformer's {TRANSFORMER_HEADS} heads"
    elif args.bench == "moe" and args.k > args.experts:
        problem = f"-k {args.k} is more than --experts {args.experts}"
    elif args.bench == "lm" and not args.exit_depths:
        problem = f"--layers {args.layers}: early exit needs a block above the exit; give at least 2"
    elif args.bench == "lm" and max(args.exit_depths) >= args.layers:
        problem = f"--exit-depths {max(args.exit_depths)} must be below --layers {args.layers} (blocks above an exit)"
    elif args.bench == "generate" and args.new_tokens < 2:
        problem = f"--new-tokens {args.new_tokens}: a token's time is a generation's less one token's; give at least 2"
    elif args.bench == "generate" and args.depth is not None and args.depth < 1:
        problem = f"--depth {args.depth:g} must be at least 1 (a token runs a block before its first exit)"
    elif args.bench == "generate" and args.workdir is None and args.depth > args.layers:  # a run has its own
        problem = f"--depth {args.depth:g} is past --layers {args.layers}"
    elif args.bench in ("lm", "generate") and getattr(args, "workdir", None) is None and args.width % args.heads:
        problem = f"--width {args.width} is not a multiple of --heads {args.heads}"
    elif args.bench == "lm" and args.capacity > 1:
        problem = f"--capacity {args.capacity:g} must be at most 1 (the share of tokens an MoD block runs on)"
    elif args.bench == "generate" and args.thresholds and args.workdir is None:
        problem = "--thresholds times a trained run's exits: give --workdir"
    elif args.bench == "act-train" and args.steps < 2:
        problem = f"--steps {args.steps}: a rate needs at least 2 timed steps"
    if problem:
        raise ConfigError(problem)


def _check_parity_length(n: int) -> None:
    """`act-train --n`, in the range the config's data.parity_n allows, named as the flag."""
    import dataclasses

    from adaptive.config import ConfigError, DataConfig

    rule = next(f for f in dataclasses.fields(DataConfig) if f.name == "parity_n").metadata
    if not rule["lo"] <= n <= rule["hi"]:
        raise ConfigError(f"--n {n} must be in [{rule['lo']:g}, {rule['hi']:g}] (the parity length)")


def _precisions(text: str) -> list[str]:
    """`--precisions`, checked: one or more of adaptive.nn.qweight.PRECISIONS, each once."""
    from adaptive.config import ConfigError
    from adaptive.nn.qweight import PRECISIONS

    precisions = comma_entries("--precisions", text)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions or len(set(precisions)) < len(precisions):
        raise ConfigError(f"--precisions {text!r}: give one or more of {', '.join(PRECISIONS)}, each once")
    return precisions
