"""What a sweep leaves behind: DIR/summary.csv and DIR/summary.json (one row per point, its
values, status and final eval), a console table, DIR/pareto.png (accuracy vs compute over the
finished points), and on request DIR/sweep.yaml for `wandb sweep` + `wandb agent`.

The `eval_*` columns are the last periodic eval of each point, on the split its `eval_split`
column names: validation (sweep.py refuses points whose periodic evals would score test), so
a sweep's best point is chosen without reading the test split.

The wandb YAML is a grid over the point index: each agent runs `adaptive sweep ... --point=I`,
which trains exactly that point in its own workdir, so scaling out to many machines uses the
same points, names and resume logic as the local runner.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from adaptive.config import ConfigError
from adaptive.evaluation import plots
from adaptive.evaluation.report import compute_columns, describe, final_eval
from adaptive.evaluation.tables import print_table
from adaptive.experiments.sweep import Point
from adaptive.workdir.config_file import RunError, load_config
from adaptive.workdir.runinfo import write_atomic

CONSOLE_COLUMNS = (
    "point",
    "status",
    "method",
    "eval_split",
    "eval_accuracy",
    "eval_steps",
    "eval_flops",
    "deviation_pct",
)


def summarize(points: list[Point], workdir: Path) -> list[dict]:
    rows = []
    for p in points:
        row = {"index": p.index, "point": p.name, "status": p.status, **p.values}
        if p.status == "done":
            try:
                cfg = load_config(p.workdir)
                final = final_eval(p.workdir)
            except (RunError, ConfigError) as e:  # e.g. another host's point whose data this one lacks
                row["status"], row["detail"] = "failed", str(e)
            else:
                row.update({"run": p.name, **describe(cfg)})
                row.update(compute_columns(cfg, final))
                row["eval_accuracy"], row["eval_steps"] = final["eval/accuracy"], final["eval/steps_mean"]
                row["eval_split"] = final.get("eval/split", cfg.data.eval_split)  # older runs lack the field
                row["eval_examples"] = final.get("eval/examples")  # data.eval_examples may thin a split
                by_difficulty = [s for s in final.get("eval/steps_by_difficulty") or [] if s is not None]
                if by_difficulty:  # how compute moves from the easiest inputs to the hardest
                    row["steps_easiest"], row["steps_hardest"] = by_difficulty[0], by_difficulty[-1]
        if p.detail:
            row["detail"] = p.detail
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    # whole files only: wandb agents running one --point each may write the summary at once
    write_atomic(workdir / "summary.csv", table.getvalue())
    write_atomic(workdir / "summary.json", json.dumps(rows, indent=1) + "\n")
    print_table(rows, [c for c in (*CONSOLE_COLUMNS, "detail") if any(c in r for r in rows)])
    done = [r for r in rows if r["status"] == "done"]
    if done:
        plots.accuracy_vs_compute(done, str(workdir / "pareto.png"))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "partial", "running", "new")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; wrote {workdir / 'summary.csv'}")
    return rows


def wandb_yaml(spec: str, workdir: Path, count: int, overrides: list[str]) -> Path:
    """DIR/sweep.yaml: `wandb sweep DIR/sweep.yaml`, then `wandb agent ID` on each machine."""
    path, colon, arg = spec.partition(":")  # an agent may start in any folder: the config's path absolute
    spec = str(Path(path).resolve()) + colon + arg
    command = ["${env}", "adaptive", "sweep", "--config", spec, "--workdir", str(workdir), *overrides, "${args}"]
    lines = [
        f"# {count} points of {spec}; each agent trains one point: adaptive sweep ... --point=I",
        "program: adaptive",
        "method: grid",
        "parameters:",
        "  point:",
        f"    values: [{', '.join(str(i) for i in range(count))}]",
        "command:",
        *(f"  - {json.dumps(c)}" for c in command),
    ]
    path = workdir / "sweep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
