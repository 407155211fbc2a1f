"""`adaptive export`: a classifier's or a language model's run as a verified artifact."""

from __future__ import annotations

import functools


def run(args) -> int:
    from adaptive.cli.parser import refuse_flags_of_the_other_kind
    from adaptive.config import ConfigError
    from adaptive.inference.export import export_run, load_artifact
    from adaptive.workdir.config_file import load_config

    log = lambda line: print(line, flush=True)  # noqa: E731
    # checked before anything loads: the points are timed after minutes of scoring and fine-tuning
    for flag, value, least in (
        ("--points-batch", args.points_batch, 1),
        ("--fine-tune-steps", args.fine_tune_steps, 0),
        ("--aware-steps", args.aware_steps, 0),
    ):
        if value < least:
            raise ConfigError(f"{flag}={value} must be >= {least}")
    language_model = load_config(args.workdir).model.kind == "lm"
    if not language_model:
        minimal = ["export", "--workdir", "DIR", "--out", "ART"]
        names = ("prompt_capacity", "new_tokens", "slots")
        refuse_flags_of_the_other_kind(args, minimal, names, "language models", f"{args.workdir} holds a classifier")
    if language_model:
        from adaptive.inference.lm_export import export_lm_run, load_lm_artifact

        out = export_lm_run(
            args.workdir,
            args.out,
            prompt_capacity=args.prompt_capacity,
            new_capacity=args.new_tokens,
            slots=args.slots,
            step=args.step,
            force=args.force,
            points=_points(args, log, language_model=True),
        )
        _, meta = load_lm_artifact(out)
        exits = f"default exit threshold {meta['exit_threshold']['default']:g}"
        exits = exits if meta["config"]["lm"]["exits"] else "no exits"
        print(
            f"wrote {out} from step {meta['source']['step']} ({meta['bytes']} bytes, sha256 {meta['sha256'][:12]}...; "
            "prompts up to "
            f"{meta['prompt_capacity'] - 1} bytes (and BOS), up to {meta['new_capacity']} new, caps {meta['caps']}, "
            f"{exits}, {meta['slots']['count']} serving slots); "
            "verified against the live decoder"
        )
        for p in meta.get("operating_points", []):
            print(
                f"  {p['precision']:>5} prune {p['prune']:<4g} bits/byte {p['bits_per_byte']:.4f}  "
                f"FLOPs/token {p['flops']:.3g} (every block)  weights {p['weight_bytes'] / 1024:.1f} KB  "
                f"memory {p['memory']['total_mb']:.3f} MB  {p['latency_ms']['per_token']:.3f} ms/token "
                f"at batch {p['latency_ms']['batch']}"
            )
        return 0

    points = _points(args, log)
    out = export_run(args.workdir, args.out, step=args.step, force=args.force, log=log, points=points)
    _, meta = load_artifact(out)
    print(
        f"wrote {out} from step {meta['source']['step']} ({meta['bytes']} bytes, sha256 {meta['sha256'][:12]}..., "
        f"caps: {meta['caps']}); "
        "verified against the live model"
    )
    for p in meta.get("operating_points", []):
        print(
            f"  {p['precision']:>5} prune {p['prune']:<4g} accuracy {p['accuracy']:.4f}  "
            f"FLOPs at the cap {p['flops']:.3g}  weights {p['weight_bytes'] / 1024:.1f} KB  "
            f"memory {p['memory']['total_mb']:.3f} MB  {p['latency_ms']['median']:.3f} ms at batch "
            f"{p['latency_ms']['batch']}"
        )
    if meta.get("operating_points"):  # the accuracy is as the model halts; `adaptive eval --points` prices that
        print("  (accuracy on validation as the model halts under its cap; eval --points gives the FLOPs spent there)")
    return 0


def _points(args, log, language_model: bool = False):
    """The operating points the flags ask for, as the exporter's `points` callable (None: the
    model alone)."""
    from adaptive.cli.arg_types import comma_entries
    from adaptive.config import ConfigError

    precisions = comma_entries("--precision", args.precision)
    prune_entries = comma_entries("--prune", args.prune)
    try:
        prunes = [float(v) for v in prune_entries]
    except ValueError:
        raise ConfigError(f"--prune {args.prune!r}: give shares in [0, 1), comma-separated") from None
    if precisions == ["fp32"] and prunes == [0.0]:
        return None
    from adaptive.evaluation.operating_points import check_points, operating_points
    from adaptive.evaluation.pruning import check_prunable

    try:
        check_points(precisions, prunes)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    if language_model:
        return functools.partial(_lm_points, args, precisions, prunes, log)

    def points(run):
        if any(prunes):  # before any point is computed
            check_prunable(run, max(prunes))
        memory = run.cfg.budget.target if run.cfg.budget.unit == "memory_mb" else None
        return operating_points(
            run,
            precisions,
            prunes,
            memory_mb=memory,
            batch=args.points_batch,
            fine_tune_steps=args.fine_tune_steps,
            aware_steps=args.aware_steps,
            log=log,
        )

    return points


def _lm_points(args, precisions, prunes, log, run, threshold, slots):
    """A language model's points (adaptive.evaluation.lm_points), timed at --points-batch rows."""
    from adaptive.evaluation.lm_points import lm_operating_points

    return lm_operating_points(
        run,
        precisions,
        prunes,
        prompt_capacity=args.prompt_capacity,
        new_capacity=args.new_tokens,
        threshold=threshold,
        slots=slots,
        batch=args.points_batch,
        fine_tune_steps=args.fine_tune_steps,
        aware_steps=args.aware_steps,
        memory_mb=run.cfg.budget.target if run.cfg.budget.unit == "memory_mb" else None,
        log=log,
    )
