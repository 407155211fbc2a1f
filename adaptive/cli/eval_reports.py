"""What `adaptive eval` prints of its reports: the compute report's tables, the operating points."""

from __future__ import annotations


def print_points_report(workdir: str, metrics: dict, artifact: str) -> None:
    from adaptive.evaluation.points_report import points_report
    from adaptive.inference.restore import load_run

    report, paths = points_report(load_run(workdir, metrics["step"]), metrics["split"], artifact)
    _print_points(report["operating_points"], artifact, metrics["split"])
    print("wrote " + ", ".join(str(p) for p in paths))


def _print_points(points: list[dict], artifact: str, split: str) -> None:
    from adaptive.evaluation.tables import print_table

    keys = ("label", "accuracy", "validation_accuracy", "steps", "flops", "weight_bytes", "memory_mb", "latency_ms")
    print(f"operating points of {artifact} on the {split} split (mean steps and FLOPs as run; latency at the cap):")
    print_table([{k: r[k] for k in keys} for r in points], list(keys))


def print_expert_budgets(workdir: str, metrics: dict) -> None:
    """A static model with experts: its one step budget at each expert budget."""
    from adaptive.evaluation.eval_report import expert_budget_report
    from adaptive.evaluation.tables import print_table
    from adaptive.inference.restore import load_run

    rows, path = expert_budget_report(load_run(workdir, metrics["step"]), metrics["split"])
    print(f"a static model runs all its {metrics['budget']} steps; accuracy at each expert budget (experts per token):")
    print_table(rows, list(rows[0]))
    print(f"wrote {path}")


def print_compute_report(workdir: str, metrics: dict, baselines: list[str], points: str | None = None) -> None:
    from adaptive.evaluation.eval_report import compute_report
    from adaptive.evaluation.tables import print_table
    from adaptive.inference.restore import load_run

    report, paths = compute_report(load_run(workdir, metrics["step"]), metrics["split"], baselines, points)
    unit = report["unit"]
    if metrics["budget"] == "requests":  # the headline scored each example at its drawn cap; this, at every cap
        caps = ", ".join(metrics["request_step_caps"])
        print(
            f"the report below runs every step budget up to the full cap, not the run's request caps ({caps} steps) "
            "the line above scored"
        )
    front = [
        {"step_budget": r["step_budget"], "expert_budget": r["expert_budget"] or "all", "accuracy": r["accuracy"],
         "steps": r["steps"], unit: r["compute"]}
        for r in report["pareto_front"]
    ]  # fmt: skip
    print(f"Pareto front of accuracy vs compute ({unit}) over step and expert budgets:")
    print_table(front, list(front[0]))
    if report["budgeted_batch"]:
        source = report["budgeted_batch"][0]["calibration_split"]
        print(f"budgeted batch classification (exit thresholds calibrated on the {source} split):")
        rows = [{"target_steps": r["target_steps"], "steps": r["steps"], "accuracy": r["accuracy"]}
                for r in report["budgeted_batch"]]  # fmt: skip
        print_table(rows, list(rows[0]))
    dist, shifted = report["compute_distribution"]["steps"], report["shifted"]
    per_correct = report["cost_per_correct"]["flops"]
    print(
        f"steps per example: mean {dist['mean']:.2f}, p50 {dist['p50']:g}, p99 {dist['p99']:g}, max {dist['max']:g}; "
        + (f"FLOPs per correct answer {per_correct:.4g}" if per_correct is not None else "no answer was correct")
    )
    print(f"shifted ({shifted['what']}): accuracy {shifted['accuracy']:.4f}, mean steps {shifted['steps']['mean']:.2f}")
    if report["baselines"]:
        print(
            f"static baselines on the same split (this run: accuracy {report['accuracy']:.4f}, "
            f"{dist['mean']:.2f} steps):"
        )
        rows = [{"baseline": b["name"], "accuracy": b["accuracy"], "steps": b["steps"], "flops": b["flops"]}
                for b in report["baselines"]]  # fmt: skip
        print_table(rows, list(rows[0]))
    if points:  # as a static model's report prints them
        _print_points(report["operating_points"], points, metrics["split"])
    for path in paths:
        print(f"wrote {path}")
