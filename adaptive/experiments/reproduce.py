"""`adaptive reproduce NAME [--tiny] [--workdir DIR]`: one experiment of experiments/, end to end.

An experiment's README holds a fenced `reproduce` block that says what to run and what should
come out:

    sweep configs/parity.py                       the sweep (get_sweep of that config)
    tiny configs/parity.py:tiny                   the minutes-scale version (--tiny)
    expect tau=0.003 : eval_accuracy >= 0.95      a claim about the full run
    expect tau=0.001 : eval_steps > tau=0.01 : eval_steps
    tiny-expect tau=0.001 : eval_steps > policy=none : eval_steps

A claim selects sweep points by `key=value` filters on their values (the last part of a dotted
key is enough), averages a summary column over them (so seeds pool), and compares it with a
number or with another selection. The command runs the sweep (resumably), the compute-aware
evaluation of every adaptive point against the static ones, writes DIR/results.md, prints
which claims hold, and exits 1 if any does not.
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

from adaptive.config import ConfigError
from adaptive.evaluation.tables import markdown_table
from adaptive.experiments import sweep, sweep_summary

ROOT = Path(__file__).resolve().parents[2]
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def read_block(name: str) -> dict:
    readme = ROOT / "experiments" / name / "README.md"
    if not readme.is_file():
        known = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/README.md"))
        raise ConfigError(f"no experiment {name!r}; experiments/ has {', '.join(known)}")
    match = re.search(r"```reproduce\n(.*?)```", readme.read_text(), re.S)
    if not match:
        raise ConfigError(f"experiments/{name}/README.md has no ```reproduce block to run")
    block = {"sweep": None, "tiny": None, "expect": [], "tiny-expect": []}
    for line in match.group(1).splitlines():
        word, _, rest = line.strip().partition(" ")
        if not word or word.startswith("#"):
            continue
        if word not in block:
            raise ConfigError(f"experiments/{name}/README.md: unknown reproduce line {line.strip()!r}")
        if isinstance(block[word], list):
            block[word].append(rest.strip())
        else:
            block[word] = rest.strip()
    return block


def select(rows: list[dict], filters: str) -> list[dict]:
    """Finished rows whose values match every `key=value` (key: a dotted key or its last part)."""
    wanted = [f.split("=", 1) for f in filters.split()]
    chosen = []
    for row in rows:
        values = {k.split(".")[-1]: v for k, v in row["values"].items()} | row["values"]
        if all(k in values and _same(values[k], v) for k, v in wanted):
            chosen.append(row)
    return chosen


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def _mean(rows: list[dict], filters: str, metric: str) -> float:
    found = [r[metric] for r in select(rows, filters) if r.get("status") == "done" and r.get(metric) is not None]
    if not found:
        raise ValueError(f"no finished point matches {filters!r} with {metric!r}")
    return sum(found) / len(found)


def check(claim: str, rows: list[dict]) -> dict:
    """One claim: `FILTERS : METRIC OP (NUMBER | FILTERS : METRIC)`."""
    match = re.fullmatch(r"(.+?):\s*(\S+)\s*(>=|<=|>|<)\s*(.+)", claim)
    if not match:
        raise ConfigError(f"cannot read the claim {claim!r}; write FILTERS : METRIC OP VALUE")
    filters, metric, op, right = match.groups()
    result = {"claim": claim}
    try:
        left = _mean(rows, filters.strip(), metric)
        if ":" in right:
            other_filters, other_metric = (s.strip() for s in right.split(":", 1))
            value = _mean(rows, other_filters, other_metric)
        else:
            value = float(right)
    except ValueError as e:
        return {**result, "holds": False, "why": str(e)}
    return {**result, "holds": bool(OPS[op](left, value)), "got": left, "against": value}


def reproduce(name: str, *, tiny: bool, workdir: str | None, parallel: int, overrides: list[str]) -> int:
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.inference.restore import load_run

    block = read_block(name)
    spec = block["tiny"] if tiny else block["sweep"]
    if not spec:
        raise ConfigError(f"experiments/{name}/README.md names no {'tiny' if tiny else 'sweep'} config")
    out = Path(workdir or f"runs/reproduce/{name}{'-tiny' if tiny else ''}")
    file, sep, arg = spec.partition(":")
    spec = str(ROOT / file) + sep + arg  # the README's paths are relative to the repository
    points = sweep.load_points(spec, out, overrides)
    out.mkdir(parents=True, exist_ok=True)
    sweep.run(spec, points, parallel)
    rows = sweep_summary.summarize(points, out)
    for row, point in zip(rows, points, strict=True):
        row["values"] = point.values
    static = [str(p.workdir) for p, r in zip(points, rows, strict=True) if r["status"] == "done" and _static(p)]
    for p, r in zip(points, rows, strict=True):
        if r["status"] == "done" and not _static(p):
            report, _ = compute_report(load_run(p.workdir), r["eval_split"], static)
            r["shifted_accuracy"] = report["shifted"]["accuracy"]
            r["shifted_steps"] = report["shifted"]["steps"]["mean"]
    claims = [check(c, rows) for c in block["tiny-expect" if tiny else "expect"]]
    columns = [c for c in sweep_summary.CONSOLE_COLUMNS if any(c in r for r in rows)]
    (out / "results.md").write_text(markdown_table(rows, [*columns, "shifted_accuracy", "shifted_steps"]))
    (out / "claims.json").write_text(json.dumps(claims, indent=1) + "\n")
    print(f"\nclaims of experiments/{name}{' (tiny)' if tiny else ''}:")
    for c in claims:
        got = f"got {c['got']:.4g} vs {c['against']:.4g}" if "got" in c else c["why"]
        print(f"  {'HOLDS ' if c['holds'] else 'FAILS '} {c['claim']}   ({got})")
    print(f"wrote {out / 'results.md'}, {out / 'claims.json'}, {out / 'summary.csv'}, {out / 'pareto.png'}")
    return 0 if all(c["holds"] for c in claims) and all(r["status"] == "done" for r in rows) else 1


def _static(point) -> bool:
    from adaptive.workdir.config_file import load_config

    return load_config(point.workdir).halting.policy == "none"
