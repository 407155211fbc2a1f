"""A language-model run read once on the test split at the operating point it was trained for:
exits at `lm.exit_threshold`, MoD blocks routed by their causal predictors, every expert its
router gives, ACT halting by its rule (what the experiments of experiments/ on language models
score)."""

from __future__ import annotations

from pathlib import Path

from adaptive.evaluation.lm_report import Knobs, lm_report
from adaptive.inference.restore import Run, load_run
from adaptive.training.metrics import read_jsonl


def test_point(workdir: Path, limit: int | None, folder: str) -> tuple[Run, dict]:
    """(the run, its lm_report point on the first `limit` test windows); plots go to
    WORKDIR/eval/`folder`."""
    run = load_run(workdir, language_model=True)
    knobs = Knobs(threshold=run.cfg.lm.exit_threshold if run.cfg.lm.exits else None)
    report, _ = lm_report(run, "test", run.workdir / "eval" / folder, limit=limit, points=[knobs])
    return run, report["points"][0]


def last_logged(workdir: Path, key: str):
    """The last value of `key` in WORKDIR/metrics.jsonl (None when it was never logged)."""
    rows = read_jsonl(Path(workdir) / "metrics.jsonl")
    return next((row[key] for row in reversed(rows) if key in row), None)
