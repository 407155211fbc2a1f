"""The test split of a finished sweep: each point scored once, after every choice was made.

Training's periodic evals score the validation split, and everything chosen (early stopping,
thresholds, a sweep's main point) is chosen there. Once the sweep is over, `score_on_test` runs
each finished point through `adaptive eval`'s path on the test split and adds `test_*` columns;
adaptive points also get the compute-aware report (eval_report.py) on the test split against the
sweep's static points. Both results are cached in the point's eval/ folder by step, so a rerun
reads them instead of scoring again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from adaptive.evaluation.report import compute_columns, final_eval

SPLIT = "test"
FIRST_COLUMNS = ("point", "status", "method", "seed")


def score_on_test(points: list, rows: list[dict]) -> list[dict]:
    """`rows` (sweep_summary's, one per point) with test columns on every finished point."""
    from adaptive.evaluation.budgeted_eval import evaluate_run
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.inference.restore import load_run
    from adaptive.workdir.config_file import RunError, load_config

    done = [(p, r) for p, r in zip(points, rows, strict=True) if r["status"] == "done"]
    static = [str(p.workdir) for p, _ in done if load_config(p.workdir).halting.policy == "none"]
    for point, row in done:
        cfg, step = load_config(point.workdir), final_eval(point.workdir)["step"]
        metrics = _cached(
            point.workdir / "eval" / f"{SPLIT}-step{step}.json", lambda p=point: evaluate_run(p.workdir, split=SPLIT)[0]
        )
        row.update(split_columns(cfg, metrics))
        if str(point.workdir) in static:
            continue
        try:
            report = _cached(
                point.workdir / "eval" / f"{SPLIT}-report-step{step}.json",
                lambda p=point: compute_report(load_run(p.workdir), SPLIT, static)[0],
            )
        except RunError as e:  # a model without a per-budget trajectory (sampled PonderNet)
            row["detail"] = f"no compute-aware report: {e}"
        else:
            row[f"{SPLIT}_shifted_accuracy"] = report["shifted"]["accuracy"]
            row[f"{SPLIT}_shifted_steps"] = report["shifted"]["steps"]["mean"]
    return rows


def split_columns(cfg, metrics: dict) -> dict:
    """`adaptive eval` metrics of the test split as `test_*` columns."""
    out = {
        f"{SPLIT}_accuracy": metrics["eval/accuracy"],
        f"{SPLIT}_steps": metrics["eval/steps_mean"],
        f"{SPLIT}_flops": compute_columns(cfg, metrics)["eval_flops"],
    }
    by_difficulty = [s for s in metrics.get("eval/steps_by_difficulty") or [] if s is not None]
    if by_difficulty:  # how compute moves from the easiest inputs to the hardest
        out[f"{SPLIT}_steps_easiest"], out[f"{SPLIT}_steps_hardest"] = by_difficulty[0], by_difficulty[-1]
    return out


def table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The results table (copies of `rows`) and its columns, each column named by its split: the
    evaluation split's columns of sweep_summary (`eval_accuracy` on validation becomes
    `validation_accuracy`), then the test split's, then the rest (a command's fields)."""
    renamed = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in ("values", "index", "run", "kind")}
        split = row.pop("eval_split", None)
        if split:
            for key in [k for k in row if k.startswith("eval_") or k in ("steps_easiest", "steps_hardest")]:
                row[f"{split}_{key.removeprefix('eval_')}"] = row.pop(key)
        renamed.append(row)
    keys = list(dict.fromkeys(k for r in renamed for k in r if k != "detail"))
    first = [k for k in FIRST_COLUMNS if k in keys]
    by_split = [k for k in keys if k.startswith(("validation_", f"{SPLIT}_"))]
    by_split.sort(key=lambda k: not k.startswith("validation_"))  # validation first, then test
    rest = [k for k in keys if k not in {*first, *by_split}]
    return renamed, [*first, *by_split, *rest, *(["detail"] if any("detail" in r for r in renamed) else [])]


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
    """The report at `path` if it is whole, else computed again (one cut short by a kill)."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    return compute()
