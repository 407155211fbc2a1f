"""How close in-batch compaction can come to the static model of the mean depth on this CPU.

The mixed row of `adaptive bench depth` (residual MLP blocks of width 512, ACT, cap 20, batch
32, depths uniform over 1..20): this script times, side by side,

- a halting step's cost by the rows it runs on, c(r): the whole-batch loop at r rows with every
  row running 20 steps, less the same at 10 steps, over 10 (what the loop's fixed costs cancel);
- the compacted chain at 7 (the default), 13 and 25 bucket sizes against the static model at the
  mean depth (interpolated between depths 10 and 11), in rounds of interleaved calls;
- what the chain adds besides its loops' steps, in the same rounds: the default chain's moves
  alone (the sorts, gathers and scatters, no steps) against the loop's start and finish alone,
  and the whole-batch loop split into the default chain's segments without shrinking;

and prices what compaction could do: the whole-batch loop's time with each step's c(32)
replaced by c(rows the step runs on): for each chain's buckets (what the chain would cost if
moving rows between buckets were free), for buckets of exactly the running rows, and for those
with the smallest bucket at 8 rows (at width 512, fewer rows put a LayerNorm on the other side of
XLA:CPU's reduction-kernel switch: adaptive/nn/compaction.py). The priced figures rest on step
costs timed in calls separate from the chains, so they move from run to run more than the chains.

    python experiments/act_parity/compaction_floor.py --json experiments/act_parity/bench/compaction_floor.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.bench.depth import _model
from adaptive.compute.timing import time_side_by_side
from adaptive.nn.compaction import SMALLEST_BUCKET, bucket_sizes, run_segment, running_first, while_compacting

KIND, HIDDEN, CAP, BATCH, N_IN = "mlp", 512, 20, 32, 16
ROWS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32)
COUNTS = (7, 13, 25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    graph, params = _model(KIND, HIDDEN, "act", CAP, N_IN)
    never_halt = {
        **params,
        "halt_unit": {
            "kernel": jnp.zeros_like(params["halt_unit"]["kernel"]),
            "bias": jnp.full_like(params["halt_unit"]["bias"], -30.0),
        },
    }
    x = jnp.asarray(np.random.default_rng(0).choice([-1.0, 0.0, 1.0], (BATCH, N_IN)), jnp.float32)
    budgets = jnp.asarray(np.random.default_rng(1).integers(1, CAP + 1, BATCH), jnp.int32)
    whole = jax.jit(lambda p, x, b: nnx.merge(graph, p).infer(x, b, compact=False))

    def chain(count: int):
        def run(p, x, b):
            model = nnx.merge(graph, p)
            loop = model.infer_loop(x, b)
            sizes = bucket_sizes(BATCH, count)
            return loop.finish(while_compacting(loop.body, loop.rows, cap=CAP, active=loop.active, sizes=sizes))

        return jax.jit(run)

    def moves_only(p, x, b):
        loop = nnx.merge(graph, p).infer_loop(x, b)
        full = part = loop.rows
        where = jnp.arange(BATCH)
        for i, next_size in enumerate((*bucket_sizes(BATCH)[1:], 0)):
            full = jax.tree.map(lambda f, q, w=where: f.at[w].set(q), full, part) if i else part
            if next_size:
                keep = running_first(loop.active(part), next_size)
                where, part = where[keep], jax.tree.map(lambda a, k=keep: a[k], part)
        return loop.finish(full)

    def no_steps(p, x, b):
        loop = nnx.merge(graph, p).infer_loop(x, b)
        return loop.finish(loop.rows)

    def split_whole(p, x, b):
        loop = nnx.merge(graph, p).infer_loop(x, b)
        t, rows = jnp.int32(0), loop.rows
        for until in (*bucket_sizes(BATCH)[1:], 0):
            t, rows = run_segment(loop.body, t, rows, cap=CAP, active=loop.active, until=until)
        return loop.finish(rows)

    # a step's cost by rows: 20 steps less 10 steps, every row running
    calls = {}
    for r in ROWS:
        for steps in (10, 20):
            b = jnp.full((r,), steps, jnp.int32)
            calls[f"r{r}s{steps}"] = lambda xr=x[:r], b=b: whole(never_halt, xr, b)
    ms = time_side_by_side(calls, repeats=args.repeats)
    step_ms = {r: (ms[f"r{r}s20"] - ms[f"r{r}s10"]) / 10 for r in ROWS}

    mean_d = float(budgets.mean())
    below, above = math.floor(mean_d), math.ceil(mean_d)
    statics = {d: _model(KIND, HIDDEN, "none", d, N_IN) for d in (below, above)}
    static_fns = {d: jax.jit(lambda p, x, g=g: nnx.merge(g, p)(x).logits_BxC) for d, (g, _) in statics.items()}
    chains = {count: chain(count) for count in COUNTS}
    reference = whole(never_halt, x, budgets).logits_BxC
    for f in chains.values():  # compaction never changes an answer
        assert np.array_equal(f(never_halt, x, budgets).logits_BxC, reference)
    timed = {f"chain{c}": (lambda f=f: f(never_halt, x, budgets)) for c, f in chains.items()}
    timed["whole"] = lambda: whole(never_halt, x, budgets)
    parts = {"moves_only": moves_only, "no_steps": no_steps, "split_whole": split_whole}
    for name, f in {name: jax.jit(fn) for name, fn in parts.items()}.items():
        timed[name] = lambda f=f: f(never_halt, x, budgets)
    for d, f in static_fns.items():
        timed[f"static{d}"] = lambda f=f, p=statics[d][1]: f(p, x)
    rounds = []
    for _ in range(args.rounds):
        r = time_side_by_side(timed, repeats=args.repeats)
        r["static"] = r[f"static{below}"] + (mean_d - below) * (r[f"static{above}"] - r[f"static{below}"])
        rounds.append(r)

    depths = np.asarray(budgets)
    running = [int((depths >= t).sum()) for t in range(1, int(depths.max()) + 1)]
    c = np.interp(np.arange(BATCH + 1), ROWS, [step_ms[r] for r in ROWS])
    median = lambda name: statistics.median(r[name] for r in rounds)  # noqa: E731
    whole_ms, static_ms = median("whole"), median("static")

    def priced(floor: int, sizes: tuple[int, ...] | None = None) -> float:
        """The whole-batch loop's time with step t run at the rows it needs (at least `floor`,
        rounded up to the smallest of `sizes` that holds them)."""
        rows = [max(n, floor) for n in running]
        if sizes is not None:
            rows = [min(s for s in sizes if s >= n) for n in rows]
        return whole_ms - len(running) * c[BATCH] + sum(c[n] for n in rows)

    out = {
        "model": f"{KIND} {HIDDEN}, ACT, cap {CAP}, batch {BATCH}, depths {mean_d:.1f} mean, {int(depths.max())} max",
        "step_ms_by_rows": {str(r): round(v, 4) for r, v in step_ms.items()},
        "rows_running_by_step": running,
        "static_ms": round(static_ms, 4),
        "whole_batch_ms": round(whole_ms, 4),
        "moves_of_default_chain_ms": round(median("moves_only") - median("no_steps"), 4),
        "whole_batch_split_into_default_segments_ms": round(median("split_whole"), 4),
        "chain_ratio_by_buckets": {
            str(n): round(statistics.median(r[f"chain{n}"] / r["static"] for r in rounds), 4) for n in COUNTS
        },
        "priced_ratio_by_buckets": {
            str(count): round(priced(1, bucket_sizes(BATCH, count)) / static_ms, 4) for count in COUNTS
        },
        "best_ratio_exact_rows": round(priced(1) / static_ms, 4),
        f"best_ratio_smallest_{SMALLEST_BUCKET}": round(priced(SMALLEST_BUCKET) / static_ms, 4),
        "rounds": args.rounds,
        "repeats": args.repeats,
    }
    print(json.dumps(out, indent=1))
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
