"""`adaptive sweep --config FILE[:ARG] --workdir DIR`: its arguments and every point checked
before anything trains (configs, folders, budgets), then the points trained, and the summary."""

from __future__ import annotations

import sys


def _per_point(args) -> int:
    """How many of `--devices` each running point gets: --devices-per-point, or an even share."""
    from adaptive.config import ConfigError

    if not args.devices:
        if args.devices_per_point is not None:
            raise ConfigError("--devices-per-point shares out --devices; give the ids, e.g. --devices 0,1,2,3")
        return 0
    per_point = args.devices_per_point or len(args.devices) // args.parallel
    if per_point < 1:
        raise ConfigError(
            f"--devices lists {len(args.devices)} id(s), too few for --parallel {args.parallel} points to get one each"
        )
    if args.parallel * per_point > len(args.devices):  # before the sweep's folder is made
        raise ConfigError(
            f"--parallel {args.parallel} x --devices-per-point {per_point} needs {args.parallel * per_point} devices; "
            f"--devices lists {len(args.devices)}"
        )
    return per_point


def run(args, overrides: list[str]) -> int:
    from pathlib import Path

    from adaptive.config import ConfigError
    from adaptive.evaluation.tables import print_table
    from adaptive.experiments import sweep, sweep_checks, sweep_folders, sweep_summary
    from adaptive.workdir.runinfo import file_errors

    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file; a sweep's folder holds a run folder per point")
    sweep_folders.refuse_a_run_or_an_artifact(workdir, "--workdir", "the sweep")
    per_point = _per_point(args)
    points = sweep.load_points(args.config, workdir, overrides)
    chosen = points
    if args.point is not None:
        if not 0 <= args.point < len(points):
            raise ConfigError(f"--point must be in [0, {len(points) - 1}] for this sweep; got {args.point}")
        chosen = [points[args.point]]
    conflicts = sweep_folders.conflicts(points, chosen)  # refused before anything trains
    for note in sweep_folders.stretched_schedules([p for p in chosen if p.index not in conflicts]):
        print(f"note: {note}", file=sys.stderr)
    for p in chosen:
        sweep.refresh_status(p)
    untrained = [p for p in chosen if p.index not in conflicts and p.status not in ("done", "running")]
    refused = sweep_checks.unreachable_budgets(untrained)  # what `adaptive train` would refuse at its start
    if args.dry_run:
        details = {i: short for i, (short, _) in conflicts.items()} | refused
        rows = [
            {"index": p.index, "point": p.name}
            | {"status": "conflict" if p.index in conflicts else "refused" if p.index in refused else p.status}
            | ({"detail": details[p.index]} if p.index in details else {})
            | {"overrides": " ".join(p.overrides)}
            for p in chosen
        ]
        print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
        return 0
    if conflicts:  # before anything trains: each would be refused, and the summary's finished rows replaced
        first = next(p for p in chosen if p.index in conflicts)
        more = f" (and {len(conflicts) - 1} more point(s): --dry-run lists them)" if len(conflicts) > 1 else ""
        raise ConfigError(f"sweep point {first.workdir} {conflicts[first.index][1]}{more}")
    if refused:
        first = next(p for p in chosen if p.index in refused)
        more = f" (and {len(refused) - 1} more point(s): --dry-run lists them)" if len(refused) > 1 else ""
        raise ConfigError(f"sweep point {first.index} ({first.name}): {refused[first.index]}{more}")
    with file_errors(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    if args.wandb:
        print(f"wrote {sweep_summary.wandb_yaml(args.config, workdir.resolve(), len(points), overrides)}")
    try:
        sweep.run(args.config, chosen, args.parallel, args.devices, per_point)
    except sweep.SweepInterrupted:  # the summary says where each point stopped, then the exit a signal gets
        for p in points:
            sweep.refresh_status(p)
        sweep_summary.summarize(points, workdir)
        raise
    for p in points:  # the summary is the whole sweep's, whichever points this command trained
        if p.index not in {c.index for c in chosen}:
            sweep.refresh_status(p)
    rows = sweep_summary.summarize(points, workdir)
    return 0 if all(r["status"] == "done" for r in rows if r["index"] in {p.index for p in chosen}) else 1
