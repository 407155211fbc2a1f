"""Starting `adaptive serve`: the artifacts loaded and warmed, the controller built from their
tables, the port bound, and the server run on uvloop until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from adaptive.compute.costmodel import warn_other_machine
from adaptive.config import ConfigError
from adaptive.serving.accuracy_table import AccuracyTable, accuracy_lookup
from adaptive.serving.controller import Controller
from adaptive.serving.engine import Engine, fallback_engines
from adaptive.serving.fallbacks import Fallback
from adaptive.serving.server import Server

__all__ = ["build_controller", "rung_name", "serve", "serve_lm"]


def _fallback_accuracy(primary: Engine, backup: Engine) -> dict[int, float] | None:
    """The fallback's validation accuracy at each step budget it has, if both tables score the
    same split of the same data (else the two are not comparable, and the ladder's order decides)."""
    tables = [engine.meta.get("accuracy_at_budgets") or {} for engine in (primary, backup)]
    data = [engine.meta.get("config", {}).get("data") for engine in (primary, backup)]
    same = tables[0].get("split") == tables[1].get("split") and tables[0].get("examples") == tables[1].get("examples")
    if not (same and data[0] == data[1] and tables[0]):
        return None
    return {steps: acc for (k, steps), acc in accuracy_lookup(backup.meta).items() if k is None}


def rung_name(point: tuple[str, float] | None, rungs: int) -> str:
    """The name a fallback rung serves under (a decision's and an answer's `model`): "fallback"
    when it is the only one, "fallback:PRECISION,PRUNE" in a ladder of several points."""
    return "fallback" if rungs == 1 or point is None else f"fallback:{point[0]},{point[1]:g}"


def build_controller(
    primary: Engine,
    fallback: Engine | dict[str, Engine] | None,
    *,
    sla_ms: float,
    mode: str,
    max_batch: int,
    tolerance: float,
) -> Controller:
    """The controller of a server of `primary` with the fallback rungs `fallback` (one engine,
    {name: engine} in the order the ladder prefers them, or none)."""
    rungs = [
        Fallback(name, engine.cap, _fallback_accuracy(primary, engine))
        for name, engine in fallback_engines(fallback).items()
    ]
    return Controller(
        primary.cap,
        sla_ms,
        mode=mode,
        fallbacks=tuple(rungs),
        expert_budgets=tuple(primary.expert_budgets),
        accuracy=AccuracyTable.from_meta(primary.meta),
        tolerance=tolerance,
        max_batch=max_batch,
        groups=primary.groups,
        least_steps=primary.cap if primary.fixed_depth else 1,
    )


def serve(
    artifact: str,
    *,
    fallback: str | None,
    sla_ms: float,
    fallback_points: list[tuple[str, float]] | None = None,
    point: tuple[str, float] | None = None,
    host: str,
    port: int,
    mode: str,
    max_batch: int,
    default_steps: int | None,
    tolerance: float = 0.005,
    read_timeout_s: float = 5.0,
    max_connections: int = 1000,
    idle_timeout_s: float = 60.0,
):
    """Loads, warms, binds, then says where it serves (the port bound), until SIGINT/SIGTERM.
    `fallback_points`: the operating points (precision, prune) of `fallback` (default: of
    `artifact`) that are the ladder's fallback rungs, in the order it prefers them; none: the
    `fallback` model itself, if given. The arguments are checked by the caller (`adaptive
    serve`) before anything loads."""
    buckets = tuple(b for b in (1, 4, 16, 64) if b < max_batch) + (max_batch,)
    primary = Engine.from_artifact(artifact, buckets=buckets, point=point)
    if (cost_model := primary.meta.get("cost_model")) and "machine" in cost_model:
        warn_other_machine(str(cost_model["machine"]), f"the cost model of {artifact}")
    points = list(fallback_points or ([None] if fallback else []))
    rungs = {}
    for p in points:  # a smaller model, or operating points (precision, pruning) of one
        rungs[rung_name(p, len(points))] = Engine.from_artifact(
            fallback or artifact, buckets=buckets, expert_budgets=False, point=p, flag="--fallback-point"
        )
    if primary.fixed_depth and default_steps is not None and default_steps < primary.cap:
        kept = mode == "adaptive" and any(e.steps_within(default_steps) for e in rungs.values())
        if not kept:  # every request without a budget would be refused
            raise ConfigError(
                f"--default-budget {default_steps} is below this static model's {primary.cap} steps (it runs all "
                "of them), and no fallback this policy uses runs within it"
            )
    if default_steps is not None and default_steps > primary.cap:  # as a request's budget past the cap is
        print(
            f"note: --default-budget {default_steps} is past {artifact}'s cap; it is the cap, {primary.cap}",
            file=sys.stderr,
        )
        default_steps = primary.cap
    controller = build_controller(primary, rungs, sla_ms=sla_ms, mode=mode, max_batch=max_batch, tolerance=tolerance)
    server = Server(
        primary,
        controller,
        fallback=rungs,
        max_batch=max_batch,
        default_steps=default_steps,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
    )

    _run(
        server,
        host,
        port,
        f"serving {artifact} on http://{url_host(host)}:{{port}} (SLA {sla_ms:g} ms, {mode}, fallbacks: "
        f"{', '.join(rungs) or 'none'}); executables warm",
    )


def serve_lm(
    artifact: str,
    *,
    fallback: str | None,
    ttft_ms: float,
    tpot_ms: float,
    point: tuple[str, float] | None = None,
    fallback_point: tuple[str, float] | None = None,
    host: str,
    port: int,
    policy: str = "adaptive",
    max_waiting: int = 64,
    read_timeout_s: float = 5.0,
    max_connections: int = 1000,
    idle_timeout_s: float = 60.0,
):
    """A language model's artifact (and a smaller one as the fallback) served by continuous
    batching in its slots (adaptive.serving.lm_server), until SIGINT/SIGTERM. `point`: serve that
    operating point of `artifact`; `fallback_point`: the fallback is that point of `fallback`, or
    of `artifact` when no fallback artifact is given."""
    from adaptive.inference.artifact_meta import ArtifactError
    from adaptive.inference.lm_export import load_lm_artifact
    from adaptive.inference.slot_export import ExportedSlots
    from adaptive.serving.lm_controller import LMController, ladder
    from adaptive.serving.lm_engine import LMEngine
    from adaptive.serving.lm_http_input import not_applicable
    from adaptive.serving.lm_server import LMServer

    if fallback is None and fallback_point is not None:
        fallback = artifact
    engines, metas = [], []
    for path, at in ((artifact, point), (fallback, fallback_point)):
        if path is None:
            engines.append(None)
            continue
        _, meta = load_lm_artifact(path, at)
        name = str(path) if at is None else f"{path} ({at[0]}, prune {at[1]:g})"
        engine = LMEngine(ExportedSlots(path, meta, at), name=name)
        engine.warm()
        engines.append(engine)
        metas.append(meta)
    if fallback is not None:  # every request the primary takes must fit the fallback too
        for key in ("prompt_capacity", "new_capacity"):
            if metas[1][key] < metas[0][key]:
                raise ArtifactError(
                    f"the fallback {fallback} has {key} {metas[1][key]} < the primary's {metas[0][key]}; "
                    "export it with at least the primary's capacities"
                )
    # the fallback answers at the primary's default threshold too
    for meta, at in zip(metas, (point, fallback_point), strict=False):
        if (note := uncertified_point(meta, at)) is not None:
            print(f"note: {note}", file=sys.stderr)
    controller = LMController(ladder(metas[0]), tpot_ms=tpot_ms, ttft_ms=ttft_ms, policy=policy)
    server = LMServer(
        engines[0],
        controller,
        fallback=engines[1],
        default_threshold=metas[0]["exit_threshold"]["default"],
        not_applicable=not_applicable(metas[0]["config"], metas[0]["caps"]["layers"]),
        max_waiting=max_waiting,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
    )
    slots = engines[0].slots
    also = f", fallback {engines[1].name}" if engines[1] is not None else ""
    banner = (
        f"serving {engines[0].name} on http://{url_host(host)}:{{port}} ({slots} slots, TTFT {ttft_ms:g} ms, "
        f"TPOT {tpot_ms:g} ms, {policy}, {len(controller.rungs)} rungs{also})"
    )
    _run(server, host, port, banner + "; executables warm")


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets (http://[::1]:8000)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def uncertified_point(meta: dict, point: tuple[str, float] | None) -> str | None:
    """What to say when a language model's operating point other than fp32, unpruned, is served
    at the artifact's certified exit threshold: the certificate (adaptive calibrate-exits) is the
    full-precision model's agreement with its own last layer, and this point's weights differ."""
    threshold = meta["exit_threshold"]
    if point is None or tuple(point) == ("fp32", 0.0) or not threshold.get("calibrated"):
        return None
    if threshold["default"] >= 1:  # none certified: no token exits, and there is nothing to misread
        return None
    return (
        f"the default exit threshold {threshold['default']:g} was certified on the fp32 model; the exits of "
        f"point {point[0]}, prune {point[1]:g} are not certified by it (a request may set its own threshold)"
    )


def _run(server, host: str, port: int, banner: str) -> None:
    """Binds, says where it serves ({port}: the port bound), serves until SIGINT or SIGTERM."""

    async def main():
        bound = await server.start(host, port)
        print(banner.format(port=bound), flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop()

    # uvloop: the event loop is what a request costs the server whatever model answers it
    # (HTTP, JSON, decisions), and uvloop's is the cheaper one (compare with adaptive bench serve).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
