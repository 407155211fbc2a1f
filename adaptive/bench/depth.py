"""`adaptive bench depth`: an ACT model that halts at depth d against the static depth-d model.

Both models have the same blocks; the ACT model runs inference's `while_loop` with the cap
compiled in, and its halting unit is set so that every example halts after exactly d steps
(weights 0, bias logit(1/d): the halting mass reaches 1 at step d). The static model is the
same stack unrolled to d steps: the fastest network of that depth. The ratio is the price of
adaptivity (loop, halting unit, bookkeeping) when it saves nothing.

At every batch above 1 (32 by default) the `mixed` row gives each example its own depth (uniform
over 1..cap) through its budget, timed two ways side by side: with in-batch compaction
(adaptive.nn.compaction, the default: the rows still running move to smaller buckets as others
halt) and as one whole-batch loop that runs until its slowest example is done (`whole_batch_ms`,
`whole_batch_ratio`). A third way runs the same chain of buckets as separate calls, one
executable per bucket with the rows gathered and scattered between them (host-side re-dispatch,
as a server holding executables per batch size could: `host_chain_ms`, `host_chain_ratio`). The
static model of the mean depth is timed at the two depths around it and interpolated (its time
is linear in depth), so a mean of 10.5 is not compared with depth 10. In JSON a mixed row's `d`
is that mean depth (a number; `d_max` the deepest example, `mixed` true); the table shows
"mixed(mean 3.2, max 4)". `waiting_fraction` is the share of the whole-batch loop's time spent
after the average example would have finished: 1 - static(mean d) / whole batch; where noise puts
it outside [0, 1] (the static model timed slower than the whole-batch loop) it is null, with a
warning. With `rounds` > 1 the mixed row is timed that many times (each round its own
interleaved medians): its ratios are the medians over rounds, `*_ratio_rounds` every round's
ratio, and from 3 rounds on `*_low`, `*_high` the 95% t-interval of their geometric mean
(computed on log ratios, so it stays above 0); with 2 rounds they are null (`interval_note` says
why), since a machine whose speed drifts between runs moves a single ratio by several percent.
A deeper static model timed faster than a shallower one is noise, said in a warning.
"""

from __future__ import annotations

import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import config as config_lib
from adaptive.bench.results import (
    MIN_ROUNDS_FOR_INTERVAL,
    SLOWER_AT_LEAST,
    noise_warning,
    ratio_interval,
    warn_deeper_faster,
    write_json,
)
from adaptive.compute.timing import time_side_by_side
from adaptive.evaluation.tables import print_table
from adaptive.nn.compaction import run_segment, running_first
from adaptive.nn.models import build_model

COLUMNS = [
    "kind",
    "hidden",
    "batch",
    "d",
    "adaptive_ms",
    "static_ms",
    "ratio",
    "ratio_95%",
    "whole_batch_ms",
    "whole_batch_ratio",
    "host_chain_ms",
    "host_chain_ratio",
    "slowest_ms",
    "waiting_fraction",
]
BASELINES = (
    "ms: medians of interleaved calls (over rounds too, with --rounds); ratio = adaptive_ms / static_ms "
    "(with --rounds: the median of each round's own ratio, which the ms medians need not divide to), "
    "where static_ms is the static model of depth d (mixed rows: interpolated at the mean depth between "
    "the static depths around it); whole_batch_ratio = whole_batch_ms / static_ms; host_chain_ratio = "
    "host_chain_ms / static_ms; slowest_ms: the static model of the deepest example; waiting_fraction = "
    "1 - static_ms / whole_batch_ms"
)


class _Spec:
    def __init__(self, n_in: int):
        self.input_shape, self.num_classes = (n_in,), 2


def _model(kind: str, hidden: int, policy: str, steps: int, n_in: int):
    cfg = config_lib.Config(
        model=config_lib.ModelConfig(kind=kind, hidden=hidden, depth=steps),
        halting=config_lib.HaltingConfig(policy=policy, max_steps=steps),
    )
    graphdef, params = nnx.split(build_model(cfg, _Spec(n_in)), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def _halting_at(params: dict, d: int) -> dict:
    """ACT parameters whose halting probability is 1/d at every step: each example halts at d."""
    bias = 10.0 if d == 1 else math.log((1 / d) / (1 - 1 / d))
    unit = {
        "kernel": jnp.zeros_like(params["halt_unit"]["kernel"]),
        "bias": jnp.full_like(params["halt_unit"]["bias"], bias),
    }
    return {**params, "halt_unit": unit}


def run(
    *,
    kind: str,
    hidden: int,
    cap: int,
    depths: list[int],
    batches: list[int],
    repeats: int,
    n_in: int,
    json_out: str | None,
    rounds: int = 1,
) -> list[dict]:
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    heads = config_lib.ModelConfig().num_heads
    if kind == "transformer" and hidden % heads:
        raise ValueError(f"hidden={hidden} is not a multiple of the transformer's {heads} heads")
    act_graph, act_params = _model(kind, hidden, "act", cap, n_in)
    infer = jax.jit(lambda p, x, b: nnx.merge(act_graph, p).infer(x, b))
    rows = []
    for batch in batches:
        x = jnp.asarray(np.random.default_rng(0).choice([-1.0, 0.0, 1.0], (batch, n_in)), jnp.float32)
        full = jnp.full((batch,), cap, jnp.int32)
        for d in depths:
            static_graph, static_params = _model(kind, hidden, "none", d, n_in)
            static = jax.jit(lambda p, x, g=static_graph: nnx.merge(g, p)(x).logits_BxC)
            params = _halting_at(act_params, d)
            steps = np.asarray(infer(params, x, full).steps_B)
            assert (steps == d).all(), f"calibration failed: steps {steps} != {d}"
            ms = time_side_by_side(
                {
                    "adaptive": lambda p=params, x=x, b=full: infer(p, x, b),
                    "static": lambda f=static, p=static_params, x=x: f(p, x),
                },
                repeats=repeats,
            )
            rows.append(
                {
                    "kind": kind,
                    "hidden": hidden,
                    "batch": batch,
                    "d": d,
                    "mixed": False,
                    "adaptive_ms": ms["adaptive"],
                    "static_ms": ms["static"],
                    "ratio": ms["adaptive"] / ms["static"],
                }
            )
        if batch > 1:
            whole = jax.jit(lambda p, x, b: nnx.merge(act_graph, p).infer(x, b, compact=False))
            host = _host_chain(act_graph, act_params, cap, batch)
            rows.append(
                _mixed_row(kind, hidden, cap, batch, n_in, x, (infer, whole, host), act_params, repeats, rounds)
            )
    _check_plausible(rows)
    print(BASELINES)
    print_table([{**r, "d": _depth_text(r), "ratio_95%": _interval_text(r, "ratio")} for r in rows], COLUMNS)
    if any(r.get("interval_note") for r in rows):
        print(next(r["interval_note"] for r in rows if r.get("interval_note")))
    write_json(json_out, rows)
    return rows


def _interval_text(row: dict, name: str) -> str | None:
    """`name`'s 95% interval over rounds as "[low, high]", where the row has one (None: a blank cell)."""
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    return None if low is None or high is None else f"[{low:.3g}, {high:.3g}]"


def _depth_text(row: dict) -> str | int:
    return f"mixed(mean {row['d']:.1f}, max {row['d_max']})" if row["mixed"] else row["d"]


def _check_plausible(rows: list[dict]) -> None:
    """Warnings for what cannot be right: a deeper static model clearly faster than a shallower one
    (at the same batch), the deepest example's static model clearly faster than the mean depth's."""
    for batch in sorted({r["batch"] for r in rows}):
        warn_deeper_faster(
            [(r["d"], r["static_ms"]) for r in rows if r["batch"] == batch and not r["mixed"]],
            lambda d1, ms1, d2, ms2, batch=batch: (
                f"at batch {batch} static depth {d2} timed faster than depth {d1} ({ms2:.3g} < {ms1:.3g})"
            ),
        )
        for r in rows:
            if (
                r["batch"] == batch
                and r["mixed"]
                and r["d_max"] > r["d"]
                and r["slowest_ms"] < SLOWER_AT_LEAST * r["static_ms"]
            ):
                noise_warning(
                    f"at batch {batch} static depth {r['d_max']} timed faster than the mean depth {r['d']:.2f} "
                    f"({r['slowest_ms']:.3g} < {r['static_ms']:.3g} ms)"
                )


def _host_chain(graph, params, cap: int, batch: int):
    """Compaction by host-side re-dispatch: the chain of `DepthModel.compaction_buckets` with each bucket's
    loop its own executable (the rows still running gathered into the next bucket and the
    finished ones scattered back inside it); calls are dispatched without waiting in between."""

    def segment(until: int):
        def f(params, x, budgets, t, part, full, where):
            loop = nnx.merge(graph, params).infer_loop(x, budgets)  # only its functions are used
            t, part = run_segment(loop.body, t, part, cap=cap, active=loop.active, until=until)
            full = jax.tree.map(lambda f, p: f.at[where].set(p), full, part)
            if not until:
                return t, part, full, where
            keep = running_first(loop.active(part), until)
            return t, jax.tree.map(lambda a: a[keep], part), full, where[keep]

        return jax.jit(f)

    start = jax.jit(lambda p, x, b: nnx.merge(graph, p).infer_loop(x, b).rows)
    finish = jax.jit(lambda p, x, b, rows: nnx.merge(graph, p).infer_loop(x, b).finish(rows))
    buckets = nnx.merge(graph, params).compaction_buckets(batch)
    segments = [segment(until) for until in (*buckets[1:], 0)]

    def run(params, x, budgets):
        full = part = start(params, x, budgets)
        t, where = jnp.int32(0), jnp.arange(batch)
        for seg in segments:
            t, part, full, where = seg(params, x, budgets, t, part, full, where)
        return finish(params, x, budgets, full)

    return run


def _mixed_row(kind, hidden, cap, batch, n_in, x, infers, act_params, repeats, rounds) -> dict:
    compacted, whole, host = infers
    budgets = jnp.asarray(np.random.default_rng(1).integers(1, cap + 1, batch), jnp.int32)
    never_halt = {
        **act_params,
        "halt_unit": {
            "kernel": jnp.zeros_like(act_params["halt_unit"]["kernel"]),
            "bias": jnp.full_like(act_params["halt_unit"]["bias"], -30.0),
        },
    }
    mean_d, max_d = float(budgets.mean()), int(budgets.max())
    # the static model of the mean depth: timed at the depths around it, interpolated
    below, above = max(1, math.floor(mean_d)), max(1, math.ceil(mean_d))
    at_below, at_above = _model(kind, hidden, "none", below, n_in), _model(kind, hidden, "none", above, n_in)
    at_max = _model(kind, hidden, "none", max_d, n_in)
    f_below = jax.jit(lambda p, x, g=at_below[0]: nnx.merge(g, p)(x).logits_BxC)
    f_above = jax.jit(lambda p, x, g=at_above[0]: nnx.merge(g, p)(x).logits_BxC)
    f_max = jax.jit(lambda p, x, g=at_max[0]: nnx.merge(g, p)(x).logits_BxC)
    a, b, c = (f(never_halt, x, budgets) for f in (compacted, whole, host))
    assert np.array_equal(a.logits_BxC, b.logits_BxC), "compaction changed the outputs"
    assert np.array_equal(c.logits_BxC, b.logits_BxC), "host-side compaction changed the outputs"
    calls = {
        "adaptive": lambda: compacted(never_halt, x, budgets),
        "whole_batch": lambda: whole(never_halt, x, budgets),
        "host_chain": lambda: host(never_halt, x, budgets),
        "static_below": lambda: f_below(at_below[1], x),
        "static_above": lambda: f_above(at_above[1], x),
        "slowest": lambda: f_max(at_max[1], x),
    }
    per_round = []
    for _ in range(rounds):  # each round its own interleaved medians: the machine drifts between them
        ms = time_side_by_side(calls, repeats=repeats)
        ms["static"] = ms["static_below"] + (mean_d - below) * (ms["static_above"] - ms["static_below"])
        per_round.append(ms)
    ms = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
    ratios = {
        name: [r[key] / r["static"] for r in per_round]
        for name, key in (
            ("ratio", "adaptive"),
            ("whole_batch_ratio", "whole_batch"),
            ("host_chain_ratio", "host_chain"),
        )
    }
    spread = {}
    if rounds > 1:
        for name, values in ratios.items():
            low, high = ratio_interval(values)
            spread.update({f"{name}_rounds": values, f"{name}_low": low, f"{name}_high": high})
        spread["interval"] = "95% t-interval of the geometric mean ratio over rounds (on log ratios)"
    if 1 < rounds < MIN_ROUNDS_FOR_INTERVAL:
        spread["interval_note"] = (
            f"--rounds {rounds}: too few rounds for an interval (*_low, *_high null); give --rounds "
            f"{MIN_ROUNDS_FOR_INTERVAL} or more"
        )
    waiting = 1.0 - ms["static"] / ms["whole_batch"]
    if not 0.0 <= waiting <= 1.0:
        noise_warning(
            f"at batch {batch} the static model of the mean depth ({ms['static']:.3g} ms) timed slower than the "
            f"whole-batch loop ({ms['whole_batch']:.3g} ms), so waiting_fraction {waiting:.3f} is outside [0, 1] "
            "and is left null"
        )
        waiting = None
    if above > below and ms["static_above"] < SLOWER_AT_LEAST * ms["static_below"]:
        noise_warning(
            f"at batch {batch} static depth {above} timed faster than depth {below} "
            f"({ms['static_above']:.3g} < {ms['static_below']:.3g} ms), so the static time at the mean depth is too"
        )
    return {
        "kind": kind,
        "hidden": hidden,
        "batch": batch,
        "d": round(mean_d, 3),
        "d_max": max_d,
        "mixed": True,
        "adaptive_ms": ms["adaptive"],
        "static_ms": ms["static"],
        "ratio": statistics.median(ratios["ratio"]),
        "whole_batch_ms": ms["whole_batch"],
        "whole_batch_ratio": statistics.median(ratios["whole_batch_ratio"]),
        "host_chain_ms": ms["host_chain"],
        "host_chain_ratio": statistics.median(ratios["host_chain_ratio"]),
        "static_depths": [below, above],
        "slowest_ms": ms["slowest"],
        "waiting_fraction": waiting,
        "rounds": rounds,
        **spread,
    }
