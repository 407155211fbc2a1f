"""`adaptive report DIR... [--split S] [--plot PNG] [--markdown MD]`: compare finished runs.

One row per run with what distinguishes it (policy, its hyper-parameters, depth) and its final
eval accuracy and compute; `--split` adds accuracy and compute on other splits (e.g. parity's
extrapolation range in `test`); `--plot` draws compute and accuracy against difficulty.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.budget import Budget
from adaptive.compute.flops import flops_model
from adaptive.evaluation import plots
from adaptive.evaluation.budgeted_eval import evaluate_run
from adaptive.evaluation.intervals import mean_interval
from adaptive.evaluation.tables import markdown_table, print_table
from adaptive.training.metrics import read_jsonl
from adaptive.workdir.config_file import RunError, checkpoint_folder, load_config, saved_steps, task_label
from adaptive.workdir.runinfo import WorkdirError


def describe(cfg) -> dict:
    h = cfg.halting
    if cfg.model.kind == "lm" and h.policy == "none" and (cfg.lm.exits or cfg.lm.mod_capacity > 0):
        parts = [f"{cfg.model.depth} blocks"]
        if cfg.lm.exits:
            parts.append(f"exits {cfg.lm.confidence}>={cfg.lm.exit_threshold:g}")
        if cfg.lm.mod_capacity > 0:
            parts.append(f"MoD {cfg.lm.mod_capacity:g} every {cfg.lm.mod_every}")
        method = ", ".join(parts)
    elif h.policy == "none":
        method = f"static depth {cfg.model.depth}"
    elif h.policy == "act":
        method = f"ACT tau={h.tau:g}"
    elif h.policy == "pondernet":
        method = f"PonderNet beta={h.beta:g} lambda_p={h.lambda_p:g}"
    else:
        method = f"early exit {h.confidence}>={h.exit_threshold:g}"
    if cfg.moe.enabled:
        routing = {"top_k": f"top-{cfg.moe.k}", "top_p": f"top-p {cfg.moe.top_p:g} (k<={cfg.moe.k})"}.get(
            cfg.moe.router, "expert choice"
        )
        method += f" + MoE {cfg.moe.num_experts}x {routing} cf={cfg.moe.capacity_factor:g}"
        if cfg.moe.balance_weight == 0:
            method += " no-balance-loss"
    return {"method": method, "kind": cfg.model.kind}


def _leave_out(workdirs: list[str], unready, why: str) -> list[str]:
    """`workdirs` less the `unready` ones, said in one line, when several are given (DIR/* of a
    sweep under way); a single one is left to fail as one, naming what it lacks."""
    left = [w for w in workdirs if unready(w)] if len(workdirs) > 1 else []
    if left:
        names = ", ".join(Path(w).name for w in left[:4]) + (", ..." if len(left) > 4 else "")
        print(f"left out {len(left)} folder(s) with {why}: {names}")
    if left and len(left) == len(workdirs):
        raise RunError(f"none of the {len(workdirs)} folders given is a run with an eval ({why})")
    return [w for w in workdirs if w not in left]


def _sweep_points(workdirs: list[str]) -> list[str]:
    """`workdirs` with a sweep's folder (no run itself, runs in its subfolders) replaced by its runs."""
    out = []
    for workdir in workdirs:
        folder = Path(workdir)
        runs = [] if (folder / "config.json").exists() or not folder.is_dir() else _runs_in(folder)
        if runs:
            print(f"{workdir}: a sweep's folder; reading its {len(runs)} run(s)")
        out += runs or [workdir]
    return out


def _runs_in(folder: Path) -> list[str]:
    return sorted(str(sub) for sub in folder.iterdir() if sub.is_dir() and (sub / "config.json").is_file())


def _readable(workdirs: list[str]) -> list[str]:
    """`workdirs` less those whose config or metrics cannot be read, each said in one line with
    its reason, when several are given: one damaged run does not take the others' table with it
    (a single one fails with that reason)."""
    if len(workdirs) < 2:
        return workdirs
    kept = []
    for workdir in workdirs:
        try:
            load_config(Path(workdir))
            if (Path(workdir) / "metrics.jsonl").is_file():
                read_jsonl(Path(workdir) / "metrics.jsonl")
        except (RunError, WorkdirError, config_lib.ConfigError) as e:
            print(f"left out {Path(workdir).name}: {e}")
            continue
        kept.append(workdir)
    if not kept:
        raise RunError(f"none of the {len(workdirs)} folders given can be read (each said why above)")
    return kept


def _has_eval(workdir: str) -> bool:
    try:
        final_eval(Path(workdir))
    except RunError:
        return False
    return True


def final_eval(workdir: Path) -> dict:
    if not (Path(workdir) / "metrics.jsonl").is_file():  # stopped before its first logged step
        raise RunError(f"{workdir} has no eval yet (no metrics.jsonl)")
    logged = read_jsonl(Path(workdir) / "metrics.jsonl")
    rows = [r for r in logged if r.get("split") == "eval"]
    if not rows:
        damaged = not logged and saved_steps(Path(workdir))  # checkpoints, yet not a line logged
        raise RunError(
            f"{workdir} has no eval yet" + (" (metrics.jsonl is empty, though it has checkpoints)" if damaged else "")
        )
    return rows[-1]


def report(
    workdirs: list[str],
    *,
    splits: list[str],
    plot: str | None,
    markdown: str | None,
    usage: str | None = None,
    pareto: str | None = None,
) -> list[dict]:
    """Prints (and optionally writes) one row per run, then one per group of runs that differ
    only in their seed (mean and 95% interval over seeds); the plot shows group means."""
    outputs = {"--plot": plot, "--markdown": markdown, "--usage": usage, "--pareto": pareto}
    named = [(flag, Path(path).resolve()) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(named):  # the later file would replace the earlier
        clash = next((other for other, there in named[:i] if there == path), None)
        if clash:
            raise RunError(f"{clash} and {flag} both name {path}; give each output its own file")
    workdirs = _sweep_points(workdirs)
    files = [w for w in workdirs if Path(w).is_file()]  # a sweep's summary and plot, from DIR/*
    if files:
        workdirs = [w for w in workdirs if w not in files]
        print(f"left out {len(files)} file(s) that are not runs: {', '.join(Path(f).name for f in files[:4])}")
        if not workdirs:
            raise RunError("no run folder among the paths given, only files")
    seen = {}
    for workdir in workdirs:  # one run given twice would count as two seeds
        if (key := Path(workdir).resolve()) in seen:
            raise RunError(f"{workdir} is given twice (also as {seen[key]}); give each run once")
        seen[key] = workdir
    # DIR/* of a sweep under way: a point not started yet has a folder but no run in it
    workdirs = _leave_out(workdirs, lambda w: Path(w).is_dir() and not (Path(w) / "config.json").is_file(), "no run")
    workdirs = _readable(workdirs)
    same, kinds, tasks = {}, {}, {}
    for workdir in workdirs:  # a copied run folder: its results would count twice among the seeds
        cfg = load_config(workdir)
        if (key := (_without_seed(cfg), cfg.seed)) in same:
            raise RunError(f"{workdir} and {same[key]} are runs of the same config and seed; give one of them")
        same[key] = workdir
        kinds.setdefault(cfg.model.kind == "lm", workdir)
        if len(kinds) > 1:  # FLOPs per token beside FLOPs per example, next-byte beside class accuracy
            raise RunError(
                f"{kinds[True]} is a language model and {kinds[False]} a classifier: their compute and "
                "accuracy are not on one scale; report each kind on its own"
            )
        tasks.setdefault(task_label(cfg, [cfg.data.eval_split, *splits]), (workdir, cfg))
    if len(tasks) > 1 and (plot or pareto):  # the table lists each run with its task; a plot compares them
        (a, first), (b, other) = list(tasks.items())[:2]
        raise RunError(
            f"{'--plot' if plot else '--pareto'} compares runs of one task: {other[0]} is {b}, {first[0]} {a} "
            "(the table alone lists runs of several)"
        )
    if usage and not any(load_config(w).moe.enabled for w in workdirs):
        raise RunError("--usage plots how tokens spread over experts; none of these runs has experts")
    workdirs = _leave_out(workdirs, lambda w: not _has_eval(w), "no eval yet")  # a point still training
    if plot and workdirs and not any(final_eval(w).get("eval/steps_by_difficulty") for w in workdirs):
        raise RunError(
            "--plot draws compute and accuracy against each example's difficulty; none of these runs' data has "
            "one (parity and addition do)"
        )
    rows, curves, groups, notes = [], [], {}, []
    for workdir in map(Path, workdirs):
        cfg = load_config(workdir)
        final = final_eval(workdir)
        task = {"task": task_label(cfg, [cfg.data.eval_split, *splits])} if len(tasks) > 1 else {}
        row = {"run": workdir.name, **task, **describe(cfg)}
        row.update(seed=cfg.seed, step=final["step"])
        finished = cfg.train.steps in saved_steps(workdir)  # a run ends with an eval and a checkpoint
        if finished and final["step"] < cfg.train.steps:  # so the log lost its last lines (cut short, or copied)
            notes.append(
                f"{workdir.name}: metrics.jsonl's last eval is at step {final['step']}, but the run finished (its "
                f"checkpoint at step {cfg.train.steps} is saved): the table shows the older eval; rerunning its "
                "`adaptive train` command logs the final one again"
            )
        elif final["step"] < cfg.train.steps:  # still training, or stopped: beside finished runs it would mislead
            notes.append(f"{workdir.name} is unfinished: its last eval is at step {final['step']} of {cfg.train.steps}")
        row.update(compute_columns(cfg, final))
        if cfg.moe.enabled:
            last_train = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"][-1]
            row["experts_per_example"] = final.get("eval/experts_mean")
            row["train_drop_fraction"] = last_train.get("moe/drop_fraction")
            row["usage_entropy"] = last_train.get("moe/usage_entropy")
        run_curves = [(final.get("eval/split", cfg.data.eval_split), final)]  # the split it was scored on
        if splits and cfg.model.kind == "lm":
            raise RunError(
                f"--split re-scores classifiers; score the language model {workdir} on a split with "
                "`adaptive eval --workdir DIR --split SPLIT`"
            )
        for split in splits:
            scored = evaluate_run(workdir, split=split)[0]
            if scored["step"] != row["step"]:  # the newest restorable checkpoint is not the logged eval's
                row[f"{split}_at_step"] = scored["step"]
                notes.append(_other_step(workdir, split, row["step"], scored["step"]))
            run_curves.append((split, scored))
        for split, metrics in run_curves:
            row[f"{split}_accuracy"], row[f"{split}_steps"] = metrics["eval/accuracy"], metrics["eval/steps_mean"]
        rows.append(row)
        curves.append(run_curves)
        groups.setdefault(_without_seed(cfg), []).append(len(rows) - 1)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    print_table(rows, columns)
    text = markdown_table(rows, columns) + "".join(f"\nNote: {note}\n" for note in notes)
    for note in notes:
        print(f"note: {note}")
    plotted = [(rows[i]["run"], c) for i, c in enumerate(curves)]
    if any(len(members) > 1 for members in groups.values()):
        summary, plotted = _by_seed_groups(rows, curves, list(groups.values()))
        summary_columns = list(dict.fromkeys(k for r in summary for k in r))
        print("\nmean over seeds, +- the half-width of its 95% t-interval:")
        print_table(summary, summary_columns)
        text = markdown_table(summary, summary_columns) + "\nPer run:\n\n" + text
    if markdown:
        Path(markdown).write_text(text)
        print(f"wrote {markdown}")
    if plot:
        plots.by_difficulty(plotted, plot, load_config(workdirs[0]).data.name)
        print(f"wrote {plot}")
    if pareto:
        plots.accuracy_vs_compute(rows, pareto)
        print(f"wrote {pareto}")
    if usage:
        plots.expert_usage([Path(w) for w in workdirs], usage)
        print(f"wrote {usage}")
    return rows


def _other_step(workdir: Path, split: str, logged: int, scored: int) -> str:
    """Why a row's `split` columns come from another step than its logged eval, in one line."""
    if scored > logged:
        return f"{workdir.name}: its {split} columns score the step-{scored} checkpoint, newer than its last eval"
    whose = "cannot be restored" if (checkpoint_folder(workdir) / str(logged)).is_dir() else "is not kept"
    return (
        f"{workdir.name}: its {split} columns score the step-{scored} checkpoint; the others are step {logged}'s "
        f"eval, whose checkpoint {whose}"
    )


def compute_columns(cfg, final: dict) -> dict:
    """Mean FLOPs per example at evaluation, and the budget's target, realized value and gap."""
    if cfg.model.kind == "lm":
        return _lm_compute_columns(cfg, final)
    spec = data.prepare(cfg.data)
    flops = flops_model(cfg, spec.input_shape, spec.num_classes, batch=cfg.train.eval_batch_size)
    out = {"eval_flops": flops.at_steps(final["eval/steps_mean"], final.get("eval/experts_mean"))}
    budget = Budget.from_config(cfg, spec.input_shape, spec.num_classes)
    if budget is not None:
        realized = float(budget.compute(final["eval/steps_mean"], final.get("eval/experts_mean")))
        stated = f"{budget.target:g} {budget.held_unit}"
        if budget.held_unit != budget.unit:
            stated += f" ({cfg.budget.target:g} {budget.unit})"
        out.update(_gap(stated, realized, budget.target))
        # The target in FLOPs, for plots: invert the unit's (linear) compute function of steps.
        if budget.unit in ("flops", "macs"):
            out["target_flops"] = budget.target * (2.0 if budget.unit == "macs" else 1.0)
        else:
            steps_at_target = (budget.target - budget.compute(0.0)) / (budget.compute(1.0) - budget.compute(0.0))
            out["target_flops"] = flops.at_steps(steps_at_target)
    return out


def _lm_compute_columns(cfg, final: dict) -> dict:
    """A language model's columns per token, as its evaluation measured them (the FLOPs of the
    blocks each token ran, Mixture-of-Depths and experts included), and its budget's gap."""
    flops = final.get("eval/flops_per_token")
    out = {"eval_flops": flops, "bits_per_byte": final.get("eval/bits_per_byte")}
    b = cfg.budget
    if b.target is None or flops is None:
        return out
    realized = {"steps": final["eval/steps_mean"], "flops": flops, "macs": flops / 2}.get(b.unit)
    if realized is not None:
        out.update(_gap(f"{b.target:g} {b.unit} per token", realized, b.target))
        if b.unit in ("flops", "macs"):
            out["target_flops"] = b.target * (2.0 if b.unit == "macs" else 1.0)
    return out


def _gap(budget: str, realized: float, target: float) -> dict:
    return {"budget": budget, "realized": realized, "deviation_pct": 100.0 * (realized - target) / target}


def _without_seed(cfg) -> str:
    """A run's config as the key of its group of seeds: its name, how it logs and which devices
    it ran on (`adaptive sweep` turns progress bars off in its points) make no other method."""
    d = config_lib.to_dict(cfg)
    for key in ("seed", "name", "logging", "mesh"):
        d.pop(key)
    return json.dumps(d, sort_keys=True)


def seed_summary(rows: list[dict], groups: list[list[int]]) -> list[dict]:
    """One row per group of runs that differ only in the seed: every accuracy and steps column,
    FLOPs and a language model's bits per byte as the mean over seeds, beside it
    (`<column>_ci95`) the half-width of its 95% t-interval (intervals.py), 'n/a (1 seed)' for a
    group of one."""
    summary = []
    for members in groups:
        first = rows[members[0]]
        task = {"task": first["task"]} if "task" in first else {}  # runs of several tasks: which is which
        out = {**task, "method": first["method"], "kind": first["kind"], "seeds": len(members)}
        for key in first:
            values = [rows[i].get(key) for i in members]
            if key.endswith(("_accuracy", "_steps", "eval_flops", "bits_per_byte")) and None not in values:
                iv = mean_interval(values)
                out[key] = iv.mean
                out[key + "_ci95"] = "n/a (1 seed)" if iv.low is None else f"+-{iv.half_width:.3g}"
        summary.append(out)
    return summary


def _by_seed_groups(rows: list[dict], curves: list, groups: list[list[int]]):
    """The seed summary, and one mean curve per group of runs that differ only in the seed."""
    plotted = []
    for members in groups:
        mean_curves = []
        for j, (split, _) in enumerate(curves[members[0]]):
            mean_curves.append((split, _mean_metrics([curves[i][j][1] for i in members])))
        plotted.append((rows[members[0]]["method"], mean_curves))
    return seed_summary(rows, groups), plotted


def _mean_metrics(runs: list[dict]) -> dict:
    out = {}
    for key in ("eval/steps_by_difficulty", "eval/accuracy_by_difficulty"):
        if runs[0].get(key):
            columns = zip(*(r[key] for r in runs), strict=True)
            out[key] = [None if None in col else sum(col) / len(col) for col in columns]
    return out
