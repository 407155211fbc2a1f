"""`adaptive serve`: its arguments checked before anything loads (a bad one is a one-line error
within a second), then a classifier's server (adaptive.serving.launch.serve) or a language
model's (serve_lm)."""

from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    import math

    from adaptive.config import ConfigError

    checks = [  # before anything loads: a bad argument is a one-line error within a second
        (math.isfinite(args.sla_ms) and args.sla_ms > 0, "--sla-ms must be a finite number > 0", args.sla_ms),
        (1 <= args.max_batch <= 4096, "--max-batch must be in [1, 4096]", args.max_batch),
        (0 <= args.port <= 65535, "--port must be in [0, 65535] (0: any free port)", args.port),
        (
            math.isfinite(args.accuracy_tolerance) and args.accuracy_tolerance >= 0,
            "--accuracy-tolerance must be a finite number >= 0",
            args.accuracy_tolerance,
        ),
        (
            math.isfinite(args.read_timeout_s) and args.read_timeout_s > 0,
            "--read-timeout-s must be a finite number > 0",
            args.read_timeout_s,
        ),
        (
            math.isfinite(args.idle_timeout_s) and args.idle_timeout_s > 0,
            "--idle-timeout-s must be a finite number > 0",
            args.idle_timeout_s,
        ),
        (args.max_connections >= 1, "--max-connections must be >= 1", args.max_connections),
        (args.default_budget is None or args.default_budget >= 1, "--default-budget must be >= 1", args.default_budget),
        (math.isfinite(args.ttft_ms) and args.ttft_ms > 0, "--ttft-ms must be a finite number > 0", args.ttft_ms),
        (math.isfinite(args.tpot_ms) and args.tpot_ms > 0, "--tpot-ms must be a finite number > 0", args.tpot_ms),
        (args.max_waiting >= 1, "--max-waiting must be >= 1", args.max_waiting),
    ]
    for ok, message, value in checks:
        if not ok:
            raise ConfigError(f"{message}; got {value:g}")
    point = point_flag("--point", args.point) if args.point is not None else None  # "": refused
    if (args.fallback or args.fallback_point) and args.policy != "adaptive":  # it would be loaded and never used
        flag = "--fallback" if args.fallback else "--fallback-point"
        raise ConfigError(
            f"{flag} is for --policy adaptive; --policy {args.policy} serves every request on the primary"
        )

    from adaptive.cli.parser import refuse_flags_of_the_other_kind
    from adaptive.inference.artifact_meta import parse_meta
    from adaptive.inference.lm_export import FORMAT as LM_FORMAT
    from adaptive.serving.launch import serve, serve_lm

    meta = parse_meta(Path(args.artifact))
    language_model = isinstance(meta, dict) and meta.get("format") == LM_FORMAT
    minimal, what = ["serve", "--artifact", "ART"], f"{args.artifact} holds a "
    if language_model:
        names = ("sla_ms", "max_batch", "default_budget", "accuracy_tolerance")
        refuse_flags_of_the_other_kind(args, minimal, names, "classifiers", what + "language model")
    else:
        names = ("ttft_ms", "tpot_ms", "max_waiting")
        refuse_flags_of_the_other_kind(args, minimal, names, "language models", what + "classifier")
    if language_model:
        fallback_point = _lm_fallback_point(args, meta, point)
        serve_lm(
            args.artifact,
            fallback=args.fallback,
            point=point,
            fallback_point=fallback_point,
            ttft_ms=args.ttft_ms,
            tpot_ms=args.tpot_ms,
            host=args.host,
            port=args.port,
            policy=args.policy,
            max_waiting=args.max_waiting,
            read_timeout_s=args.read_timeout_s,
            max_connections=args.max_connections,
            idle_timeout_s=args.idle_timeout_s,
        )
        return 0
    if args.fallback:
        _refuse_other_task(args, meta, parse_meta(Path(args.fallback)))
    fallback_points = _fallback_points(args, meta, point)
    serve(
        args.artifact,
        fallback=args.fallback,
        point=point,
        fallback_points=fallback_points,
        sla_ms=args.sla_ms,
        host=args.host,
        port=args.port,
        mode=args.policy,
        max_batch=args.max_batch,
        default_steps=args.default_budget,
        tolerance=args.accuracy_tolerance,
        read_timeout_s=args.read_timeout_s,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout_s,
    )
    return 0


def _refuse_other_task(args, meta: dict, other: dict) -> None:
    """A classifier's --fallback answers the primary's requests: one line, before anything loads,
    unless it takes the same input, gives the same classes and was trained on the same data."""
    from adaptive.config import ConfigError

    def task(m: dict) -> dict:
        data = (m.get("config") or {}).get("data") or {}
        return {"input": (m.get("input") or {}).get("shape"), "classes": m.get("num_classes"), "data": data.get("name")}

    from adaptive.inference.lm_export import FORMAT as LM_FORMAT

    if other.get("format") == LM_FORMAT:  # (classifier artifacts of every format this version reads serve)
        raise ConfigError(
            f"--fallback {args.fallback} holds a language model and --artifact {args.artifact} a classifier: a "
            "fallback answers the primary's requests; give one of the same task"
        )
    mine, theirs = task(meta), task(other)
    for key in mine:
        if mine[key] != theirs[key]:
            raise ConfigError(
                f"--fallback {args.fallback} has {key} {theirs[key]} and --artifact {args.artifact} {mine[key]}: "
                "a fallback answers the primary's requests; give one of the same task"
            )


def point_flag(flag: str, text: str) -> tuple[str, float]:
    """`--point PRECISION,PRUNE` as (precision, prune), or a one-line error."""
    from adaptive.config import ConfigError

    precision, _, prune = text.partition(",")
    try:
        return precision, float(prune)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give PRECISION,PRUNE, e.g. int8,0.5") from None


def points_of_artifact(path: str, meta: dict | None) -> dict[tuple[str, float], dict]:
    """The operating points of the artifact at `path` (meta: its meta.json, None: read it)."""
    from adaptive.inference.artifact_meta import ArtifactError, parse_meta

    meta = meta if meta is not None else parse_meta(Path(path))
    points = meta.get("operating_points", []) if isinstance(meta, dict) else None
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        # read before the loader checks the whole file: a malformed one is refused here, in one line
        raise ArtifactError(f"{path}/meta.json is malformed: operating_points must be a list of objects")
    return {(p.get("precision"), p.get("prune")): p for p in points}


def check_point(flag: str, asked: tuple[str, float], path: str, have: dict) -> None:
    from adaptive.config import ConfigError

    if tuple(asked) != ("fp32", 0.0) and tuple(asked) not in have:
        # fp32,0 is model.jaxexport, served whether or not the export listed it among its points
        listed = ", ".join(f"{p},{f:g}" for p, f in sorted({*have, ("fp32", 0.0)}))
        raise ConfigError(f"{flag} {asked[0]},{asked[1]:g}: {path} has no such operating point (it has {listed})")


def _lm_fallback_point(args, meta: dict, point: tuple[str, float] | None) -> tuple[str, float] | None:
    """A language model's fallback point (`--fallback-point`, once: its slots are the fallback's),
    of --fallback's artifact or else of the primary's own; `--point` and it checked to exist."""
    from adaptive.config import ConfigError

    if point is not None:
        check_point("--point", point, args.artifact, points_of_artifact(args.artifact, meta))
    if not args.fallback_point:
        return None
    if len(args.fallback_point) > 1 or args.fallback_point == ["all"]:
        raise ConfigError("--fallback-point: a language model serves one fallback; name one PRECISION,PRUNE")
    asked = point_flag("--fallback-point", args.fallback_point[0])
    source = args.fallback or args.artifact
    check_point(
        "--fallback-point", asked, source, points_of_artifact(source, meta if source == args.artifact else None)
    )
    if not args.fallback and asked == tuple(point or ("fp32", 0.0)):
        raise ConfigError("--fallback-point is the primary itself; pick a smaller point")
    return asked


def _fallback_points(args, meta: dict, point: tuple[str, float] | None) -> list[tuple[str, float]]:
    """The fallback rungs `--fallback-point` names (repeatable; `all`: every point of the
    fallback's artifact that fits its memory budget and, of the primary's own artifact, measured
    quicker than the primary at export, the most accurate first), each checked to exist before
    anything loads; the primary itself is never one of them."""
    from adaptive.config import ConfigError
    from adaptive.serving.point_meta import ladder_points

    if point is not None:
        check_point("--point", point, args.artifact, points_of_artifact(args.artifact, meta))
    if not args.fallback_point:
        return []
    source = args.fallback or args.artifact
    have = points_of_artifact(source, meta if source == args.artifact else None)
    primary = None if args.fallback else tuple(point or ("fp32", 0.0))
    points = []
    for text in args.fallback_point:
        if text == "all":
            points += ladder_points({"operating_points": list(have.values())}, primary)
            continue
        asked = point_flag("--fallback-point", text)
        check_point("--fallback-point", asked, source, have)
        if asked == primary:
            raise ConfigError("--fallback-point is the primary itself; pick a smaller point")
        points.append(asked)
    points = [p for i, p in enumerate(points) if p != primary and p not in points[:i]]
    if not points:
        raise ConfigError(
            f"--fallback-point all: {source} has no operating point besides the primary that fits its memory "
            "budget and was quicker at export"
        )
    return points
