"""`adaptive export`: a classifier's or a language model's run as a verified artifact."""

from __future__ import annotations


def run(args) -> int:
    from adaptive.config import ConfigError
    from adaptive.inference.export import export_run, load_artifact
    from adaptive.workdir.config_file import load_config

    if load_config(args.workdir).model.kind == "lm":
        if _points(args, None, check_only=True):
            raise ConfigError(
                "--precision and --prune export a classifier's operating points; a language model's are not built"
            )
        from adaptive.inference.lm_export import export_lm_run, load_lm_artifact

        out = export_lm_run(
            args.workdir,
            args.out,
            prompt_capacity=args.prompt_capacity,
            new_capacity=args.new_tokens,
            slots=args.slots,
            step=args.step,
            force=args.force,
        )
        _, meta = load_lm_artifact(out)
        print(
            f"wrote {out} ({meta['bytes']} bytes, sha256 {meta['sha256'][:12]}...; prompts up to "
            f"{meta['prompt_capacity']} bytes, up to {meta['new_capacity']} new, caps {meta['caps']}, "
            f"default exit threshold {meta['exit_threshold']['default']:g}, {meta['slots']['count']} serving slots); "
            "verified against the live decoder"
        )
        return 0

    log = lambda line: print(line, flush=True)  # noqa: E731
    points = _points(args, log)
    out = export_run(args.workdir, args.out, step=args.step, force=args.force, log=log, points=points)
    _, meta = load_artifact(out)
    print(
        f"wrote {out} ({meta['bytes']} bytes, sha256 {meta['sha256'][:12]}..., caps: {meta['caps']}); "
        "verified against the live model"
    )
    for p in meta.get("operating_points", []):
        print(
            f"  {p['precision']:>5} prune {p['prune']:<4g} accuracy {p['accuracy']:.4f}  FLOPs {p['flops']:.3g}  "
            f"weights {p['weight_bytes'] / 1024:.1f} KB  memory {p['memory']['total_mb']:.3f} MB  "
            f"{p['latency_ms']['median']:.3f} ms at batch {p['latency_ms']['batch']}"
        )
    return 0


def _points(args, log, check_only: bool = False):
    """The operating points the flags ask for (None: the model alone); `check_only`: whether any."""
    from adaptive.config import ConfigError

    precisions = [p for p in args.precision.split(",") if p]
    try:
        prunes = [float(v) for v in args.prune.split(",") if v]
    except ValueError:
        raise ConfigError(f"--prune {args.prune!r}: give shares in [0, 1), comma-separated") from None
    if precisions == ["fp32"] and prunes == [0.0]:
        return None
    if check_only:
        return True
    from adaptive.evaluation.operating_points import check_points, operating_points

    try:
        check_points(precisions, prunes)
    except ValueError as e:
        raise ConfigError(str(e)) from None

    def points(run):
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
