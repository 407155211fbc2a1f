"""In-batch compaction: an inference loop that shrinks its batch as rows halt.

A batch's `while_loop` runs until its slowest row halts, applying every block to every row, so a
few deep rows make the whole batch pay for their depth. `while_compacting` runs the loop as a
chain of loops over shrinking static row counts (`bucket_sizes`): when the rows still running fit
the next, smaller bucket, they are gathered into it (running rows first, in batch order, padded
with halted ones) and the chain goes on there; the rows a bucket holds are scattered back into the
full batch when it stops. Shapes stay static, so the chain compiles once and lives inside any
jit or exported artifact.

The outputs are bitwise those of the plain loop as long as a step treats each row on its own
(no mixing across the batch: MoE capacity routing and expert choice mix rows, so `DepthModel`
compacts MoE models only when `MoEFeedForward.rows_independent_at_inference`) and the backend's
kernels give a row the same bits in every bucket as in the whole batch. On XLA:CPU they do not
in two cases, which fix the smallest bucket (`smallest_bucket`): operations on a few rows take
other kernels (hence at least 8 rows), and a reduction over each row (a LayerNorm, a softmax)
runs one kernel below 4096 elements per operation and another from there on, so a bucket must
stay on the whole batch's side of that switch for every reduction a step makes. (XLA rewrites a
one-column matmul into a reduction whose bits depend on the row count at any size, so halting
units are written out as a multiply and a sum: `adaptive.nn.policies.base.unit_logit`.) Not every
CPU keeps to this: some round a few compacted logits differently in the last bits, so tests check,
for every policy and backbone at widths on both sides of the switch, that the steps are exactly
the plain loop's and the logits are to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# The fewest rows a bucket holds whatever the widths: a one-row matmul takes another kernel, and
# below 8 rows only some ops were checked (experiments/act_parity/row_bits.py); the tests check
# every backbone and policy with buckets down to 8.
SMALLEST_BUCKET = 8
# Buckets in a chain: each is a loop compiled into the program (compile time grows with the
# count), and finer steps track the rows still running more closely; evenly spaced sizes beat
# log-spaced ones, since rows halt spread over the depths (experiments/design_measurements.md).
MAX_BUCKETS = 7
# XLA:CPU reduces rows with one kernel when an operation has fewer elements than this, with another
# from it on, and the two round differently (LayerNorms and softmaxes over rows of 16 to 1024
# elements: experiments/act_parity/row_bits.py).
REDUCTION_KERNEL_SWITCH = 4096


def smallest_bucket(batch: int, reduction_sizes: tuple[int, ...] = ()) -> int:
    """The fewest rows a bucket may hold for every row to get the bits the whole batch gives it:
    at least `SMALLEST_BUCKET`, and for each reduction a step makes over `n` elements per row
    that the whole batch runs at or above the kernel switch, enough rows to stay there."""
    floor = SMALLEST_BUCKET
    for n in reduction_sizes:
        if batch * n >= REDUCTION_KERNEL_SWITCH:
            floor = max(floor, math.ceil(REDUCTION_KERNEL_SWITCH / n))
    return floor


def bucket_sizes(batch: int, count: int = MAX_BUCKETS, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """Row counts of the chain, largest first: up to `count` sizes evenly spaced from `batch`
    down to `smallest` (rounded up, distinct); a batch too small to shrink runs as one loop."""
    if count < 1:
        raise ValueError(f"a chain needs at least one bucket, got {count}")
    if batch <= smallest or count == 1:
        return (batch,)
    gap = (batch - smallest) / (count - 1)
    return tuple(sorted({math.ceil(batch - i * gap - 1e-9) for i in range(count)}, reverse=True))


def while_compacting(
    body: Callable[[jax.Array, Any], Any],
    rows: Any,
    *,
    cap: int,
    active: Callable[[Any], jax.Array],
    sizes: tuple[int, ...],
) -> Any:
    """`rows` after `body(t, rows)` has run for t = 1, 2, ... until no row is `active` or t = cap,
    with the batch compacted along `sizes` (see the module docstring).

    `rows` is a pytree whose leaves all have the batch on their leading axis (`sizes[0]` rows);
    `body` must leave inactive rows' outputs unchanged, as a halting policy's bookkeeping does,
    since an inactive row may be carried along as padding of a smaller bucket."""
    batch = jax.tree.leaves(rows)[0].shape[0]
    if sizes[0] != batch:
        raise ValueError(f"the first bucket ({sizes[0]}) must be the batch ({batch})")
    full, part, where = rows, rows, jnp.arange(batch)
    t = jnp.int32(0)
    for i, next_size in enumerate((*sizes[1:], 0)):  # 0: the last loop runs until every row halts
        t, part = run_segment(body, t, part, cap=cap, active=active, until=next_size)
        full = jax.tree.map(lambda f, p, w=where: f.at[w].set(p), full, part) if i else part
        if next_size:
            keep = running_first(active(part), next_size)
            where, part = where[keep], jax.tree.map(lambda a, k=keep: a[k], part)
    return full


def run_segment(
    body: Callable[[jax.Array, Any], Any],
    t: jax.Array,
    part: Any,
    *,
    cap: int,
    active: Callable[[Any], jax.Array],
    until: int,
) -> tuple[jax.Array, Any]:
    """One loop of the chain: `body` from step t + 1 on, while more than `until` rows are active
    and t < cap. Returns the last step run and the rows."""

    def cond(carry):
        t, part = carry
        return (t < cap) & (active(part).sum() > until)

    def step(carry):
        t, part = carry
        t = t + 1
        return t, body(t, part)

    return jax.lax.while_loop(cond, step, (t, part))


def running_first(active_B: jax.Array, size: int) -> jax.Array:
    """Indices of the `size` rows the next bucket holds: running rows first, each group in batch
    order (a stable sort of "halted"), so halted rows pad."""
    return jnp.argsort(~active_B, stable=True)[:size]
