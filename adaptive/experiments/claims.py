"""The claims of a reproduce block, and the rule that judges them over seeds.

A claim is one line, `FILTERS : METRIC OP BAR  # where the bar comes from`:

    tau=0.003 : test_accuracy >= 0.95                  # fixed before the run
    tau=0.001 : test_steps > tau=0.01 : test_steps     # Graves 2016 sec 3.1: more tau, fewer steps
    name=parity-budget25 : test_flops <= 1.05 * target_flops     # issue 5: within 5% of the target
    policy='static small model' pattern=spike : sla_violation_rate < 0.01   # fixed before the run
    name=parity-ceiling25 : test_accuracy > name=parity-static5|parity-static10 : test_accuracy at test_flops

FILTERS are `key=value` words matched against a row's values (the last part of a dotted key is
enough; quote a value with spaces, shell-style; `a|b` matches either); every matching finished
row is one seed of the claim, and a selection may hold at most one row per seed. OP is one of
>=, <=, >, <. BAR is a number, another `FILTERS : METRIC`, `FACTOR * METRIC`: a bar read from each
selected row itself (a budget's target differs from row to row), or `FILTERS : METRIC at X`: a
front, several rows per seed (static networks of several depths), read at the left row's own X
(its realized compute) by linear interpolation between the front's two neighbouring points. The
trailing comment says where a bar with a number in it comes from (the paper, or fixed before the
run) and is required for one: a bar chosen after seeing the results proves nothing.

The rule (intervals.py has the math), with the 95% level:
- against a number: the Student t-interval of the mean over seeds must lie wholly on the claimed
  side (`>= 0.95` holds when its low end is >= 0.95; `<= 0.6` when its high end is <= 0.6);
- against another selection: the interval of the difference left - right must lie wholly on the
  claimed side of 0: paired per seed when both cover the same seeds, else Welch's;
- against `FACTOR * METRIC`: the interval of the per-seed difference METRIC_left - FACTOR *
  METRIC, both read from the same row, must lie wholly on the claimed side of 0;
- against a front: the interval of the per-seed difference between the left row's METRIC and the
  same seed's front at the left row's X must lie wholly on the claimed side of 0; a left row
  whose X lies outside its seed's front (below its cheapest point or above its dearest) is not
  compared with an extrapolation: the claim fails and says so;
- with one seed (allowed in tiny mode only, which checks the pipeline) there is no interval: the
  point estimate is compared with the bar, and the verdict says 'interval: n/a (1 seed)'.
A full (non-tiny) claim that selects fewer than MIN_SEEDS seeds is refused before anything runs.
"""

from __future__ import annotations

import math
import operator
import re
import shlex
from dataclasses import dataclass

from adaptive.config import ConfigError
from adaptive.evaluation.intervals import Interval, difference, mean_interval

MIN_SEEDS = 3
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Side:
    filters: str
    metric: str


@dataclass(frozen=True)
class Scaled:
    """`FACTOR * METRIC`: a bar read from each row the claim selects."""

    factor: float
    metric: str


@dataclass(frozen=True)
class Front:
    """`FILTERS : METRIC at X`: several rows per seed, METRIC read at the left row's X."""

    filters: str
    metric: str
    at: str


@dataclass(frozen=True)
class Claim:
    text: str  # the claim without its comment
    left: Side
    op: str
    right: Side | Scaled | Front | float
    source: str  # the trailing comment: where the bar comes from


def parse(line: str) -> Claim:
    """`FILTERS : METRIC OP (NUMBER | FILTERS : METRIC [at X] | FACTOR * METRIC)  [# SOURCE]`."""
    text, _, source = line.partition("#")
    text, source = text.strip(), source.strip()
    match = re.fullmatch(r"(.+?):\s*(\S+)\s*(>=|<=|>|<)\s*(.+)", text)
    if not match:
        raise ConfigError(f"cannot read the claim {text!r}; write FILTERS : METRIC OP VALUE  # SOURCE")
    filters, metric, op, right = match.groups()
    scaled = re.fullmatch(r"(\S+)\s*\*\s*(\S+)", right.strip())
    if ":" in right:
        other_filters, other_metric = (s.strip() for s in right.split(":", 1))
        front = re.fullmatch(r"(\S+)\s+at\s+(\S+)", other_metric)
        bar: Side | Scaled | Front | float = (
            Front(other_filters, front[1], front[2]) if front else Side(other_filters, other_metric)
        )
    else:
        try:
            bar = Scaled(float(scaled[1]), scaled[2]) if scaled else float(right)
        except ValueError:
            raise ConfigError(
                f"claim {text!r}: {right.strip()!r} is neither a number, FILTERS : METRIC nor FACTOR * METRIC"
            ) from None
        if not source:
            raise ConfigError(f"claim {text!r} does not say where its bar comes from; end it with '# from ...'")
    return Claim(text, Side(filters.strip(), metric), op, bar, source)


def select(rows: list[dict], filters: str) -> list[dict]:
    """Rows whose values match every `key=value` (key: a dotted key or its last part)."""
    try:
        wanted = [f.split("=", 1) for f in shlex.split(filters)]
    except ValueError as e:  # an unclosed quote
        raise ConfigError(f"cannot read the filters {filters!r}: {e}") from None
    if any(len(w) != 2 for w in wanted):
        raise ConfigError(f"cannot read the filters {filters!r}; write key=value words (quote values with spaces)")
    chosen = []
    for row in rows:
        values = {k.split(".")[-1]: v for k, v in row["values"].items()} | row["values"]
        if all(k in values and any(_same(values[k], alt) for alt in v.split("|")) for k, v in wanted):
            chosen.append(row)
    return chosen


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def per_seed(rows: list[dict], side: Side) -> dict:
    """seed -> the metric of the one finished matching row of that seed."""
    out = {}
    for row in select(rows, side.filters):
        if row.get("status") != "done" or row.get(side.metric) is None:
            continue
        if row["seed"] in out:
            raise ConfigError(f"{side.filters!r} selects two points of seed {row['seed']}; add a filter")
        out[row["seed"]] = float(row[side.metric])
    return out


def front_at(rows: list[dict], front: Front, x_by_seed: dict) -> tuple[dict, list]:
    """(seed -> the front's METRIC at that seed's x, seeds whose x lies outside their front)."""
    points: dict = {}
    for row in select(rows, front.filters):
        if row.get("status") == "done" and row.get(front.metric) is not None and row.get(front.at) is not None:
            points.setdefault(row["seed"], []).append((float(row[front.at]), float(row[front.metric])))
    values, outside = {}, []
    for seed, x in x_by_seed.items():
        line = sorted(points.get(seed, []))
        if len(line) < 2 or not line[0][0] <= x <= line[-1][0]:
            outside.append(seed)
            continue
        for (x0, y0), (x1, y1) in zip(line, line[1:], strict=False):
            if x0 <= x <= x1:
                values[seed] = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                break
    return values, outside


def check_design(claim: Claim, planned: list[dict], minimum: int) -> None:
    """Refuses, before anything runs, a claim whose selection over the planned rows (values and
    seed of each point) has fewer than `minimum` seeds or two points of one seed. A selection
    that matches no planned row is left to judge (it may read a command's JSON)."""
    for side in (claim.left, claim.right):
        if not isinstance(side, Side | Front):
            continue
        seeds = [r["seed"] for r in select(planned, side.filters)]
        if not seeds:
            continue
        if isinstance(side, Front):  # several points per seed: at least two to interpolate between
            if min(seeds.count(s) for s in set(seeds)) < 2:
                raise ConfigError(f"claim {claim.text!r}: the front {side.filters!r} needs >= 2 points per seed")
            seeds = sorted(set(seeds))
        if len(set(seeds)) < len(seeds):
            raise ConfigError(f"claim {claim.text!r}: {side.filters!r} selects several points of one seed")
        if len(seeds) < minimum:
            raise ConfigError(
                f"claim {claim.text!r}: {side.filters!r} selects {len(seeds)} seed(s); a full claim needs >= {minimum}"
            )


def judge(claim: Claim, rows: list[dict], minimum: int = 1) -> dict:
    """The verdict of one claim over finished rows, with the mean, the interval and the rule."""
    out = {"claim": claim.text, "source": claim.source}
    left, right = per_seed(rows, claim.left), None
    sides = [(claim.left.filters, repr(claim.left.metric), left)]
    if isinstance(claim.right, Side):
        right = per_seed(rows, claim.right)
        sides.append((claim.right.filters, repr(claim.right.metric), right))
    elif isinstance(claim.right, Front):
        right, outside = front_at(rows, claim.right, per_seed(rows, Side(claim.left.filters, claim.right.at)))
        if outside:
            return {**out, "holds": False, "why": f"{claim.right.at} outside the front for seed(s) {outside}"}
        left = {seed: left[seed] for seed in right if seed in left}
        sides = [(claim.left.filters, f"{claim.left.metric!r} against the front", left)]
    elif isinstance(claim.right, Scaled):  # paired per row: the seeds whose rows hold the value and its bar
        bars = per_seed(rows, Side(claim.left.filters, claim.right.metric))
        right = {seed: claim.right.factor * bar for seed, bar in bars.items() if seed in left}
        left = {seed: left[seed] for seed in right}
        sides = [(claim.left.filters, f"{claim.left.metric!r} and {claim.right.metric!r}", left)]
    for filters, metric, values in sides:
        if len(values) < minimum:
            why = f"{len(values)} finished seed(s) for {filters!r} with {metric}; {minimum} needed"
            return {**out, "holds": False, "why": why}
    values = [*left.values(), *(right or {}).values()]
    if not all(math.isfinite(v) for v in values):  # a diverged run's NaN: the claim fails, the table is still written
        bad = sorted(seed for side in (left, right or {}) for seed, v in side.items() if not math.isfinite(v))
        return {**out, "holds": False, "why": f"a value that is not a finite number for seed(s) {bad}"}
    if right is None:
        iv, zero = mean_interval(list(left.values())), claim.right
        out.update(mean=iv.mean, against=claim.right)
    else:
        iv, zero = difference(left, right), 0.0
        out.update(mean=sum(left.values()) / len(left), against=sum(right.values()) / len(right))
        out["difference"] = iv.mean
    out.update(holds=_holds(claim.op, iv, zero), seeds=iv.n, rule=iv.rule, interval=_pair(iv))
    return out


def _holds(op: str, iv: Interval, bar: float) -> bool:
    """The whole interval on the claimed side of `bar` (the point estimate without an interval)."""
    if iv.low is None:
        return bool(OPS[op](iv.mean, bar))
    edge = iv.low if op in (">", ">=") else iv.high
    return bool(OPS[op](edge, bar))


def _pair(iv: Interval) -> list[float] | None:
    return None if iv.low is None else [iv.low, iv.high]


def verdict_line(c: dict) -> str:
    """One console line: verdict, claim, mean and interval (or why it failed), and the bar's source."""
    head = f"  {'HOLDS' if c['holds'] else 'FAILS'}  {c['claim']}"
    if "why" in c:
        body = c["why"]
    else:
        what = "difference" if "difference" in c else "mean"
        interval = f"[{c['interval'][0]:.4g}, {c['interval'][1]:.4g}]" if c["interval"] else "n/a (1 seed)"
        body = (
            f"{what} {c.get('difference', c['mean']):.4g}, 95% interval: {interval}, {c['rule']}; "
            f"{c['mean']:.4g} vs {c['against']:.4g}"
        )
    return f"{head}\n         {body}" + (f"\n         bar: {c['source']}" if c["source"] else "")
