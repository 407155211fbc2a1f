"""`adaptive reproduce NAME [--tiny] [--workdir DIR]`: one experiment of experiments/, end to end.

An experiment's README holds a fenced `reproduce` block that says what to run and what should
come out. Full-run lines, and their `tiny-` twins that `--tiny` reads instead:

    sweep CONFIG[:ARG] [--config.KEY=VALUE ...]     a sweep (get_sweep of that config); repeatable
    tiny CONFIG[:ARG] [--config.KEY=VALUE ...]      the minutes-scale sweep (--tiny); repeatable
    run NAME COMMAND                                a command that writes JSON to {json}; repeatable
    tiny-run NAME COMMAND
    expect CLAIM  # where its bar comes from        judged on the full run
    tiny-expect CLAIM  # ...                        judged on the tiny run

Rows. Every sweep point is a row whose values are its sweep values plus `config=<file stem>`; a
`run` command's JSON (an object, or a list of objects) gives one row per object whose values are
its scalar fields plus `run=NAME`. A command holding `{seed}` runs once per seed (0 1 2; tiny: 0)
and each run's rows carry that seed; otherwise a row's seed is its `seed` field. Several sweeps
train in DIR/<i>-<stem>[-<arg>] (the config file's stem, and its argument when the line gives
one), one sweep in DIR itself; `--config.KEY=VALUE` on the command line applies to every sweep's
points (a block of runs only says it is not used: its commands take their own flags); a command's JSON
is DIR/NAME[-seedS].json, and both resume: finished points and existing JSON files are not redone.
So a folder holds one reproduction (DIR/.reproduces names it) and another's, tiny or full, is refused.

Splits. Training's periodic evals, and every choice, use the validation split; the choices a
claim depends on (which tau is the main one) are written in the block before the run. After the
sweep each finished point is scored once on the test split through `adaptive eval`'s path
(`test_accuracy`, `test_steps`, `test_flops`, `test_steps_easiest`/`_hardest`; adaptive points
also get the compute-aware report against the static points: `test_shifted_accuracy`,
`test_shifted_steps`), cached in the point's eval/ folder. Claims read only test columns (or a
command's fields), and for MoE points the last training window's routing balance
(`train_usage_entropy`, `train_drop_fraction`: collapse onto a few experts happens in training);
DIR/results.md names the split of every column.

Claims are judged over seeds on 95% intervals (claims.py states the rule); a full claim needs
>= 3 seeds. The command prints each claim's mean, interval, verdict and the source of its bar,
writes DIR/results.md and DIR/claims.json, and exits 1 if any claim fails or any point failed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from adaptive import config as config_lib
from adaptive.config import ConfigError
from adaptive.evaluation.tables import markdown_table
from adaptive.experiments import claims as claims_lib
from adaptive.experiments import held_out, sweep, sweep_checks, sweep_folders, sweep_summary
from adaptive.training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
RUN_SEEDS = {False: (0, 1, 2), True: (0,)}  # the seeds of a `run` command holding {seed}
KEYS = ("sweep", "tiny", "run", "tiny-run", "expect", "tiny-expect")
NON_TEST_PREFIXES = ("eval_", "validation_")  # metrics of the split that choices were made on
OWNER_FILE = ".reproduces"  # the title of the reproduction a folder holds
# Routing's balance where it can collapse, in training: the last logged training window's value.
TRAIN_COLUMNS = {"moe/usage_entropy": "train_usage_entropy", "moe/drop_fraction": "train_drop_fraction"}


def read_block(name: str) -> dict:
    readme = ROOT / "experiments" / name / "README.md"
    # a name is a folder of experiments/ itself: `../x` or `a/b` would title (and place) it elsewhere
    if "/" in name or name in ("", ".", "..") or not readme.is_file():
        known = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/README.md"))
        raise ConfigError(f"no experiment {name!r}; experiments/ has {', '.join(known)}")
    return parse_block(readme.read_text(), f"experiments/{name}/README.md")


def parse_block(text: str, where: str) -> dict:
    """The block's lines by keyword: sweeps as (spec, overrides), runs as (name, command), claims
    parsed (a bad one is refused here, before anything runs)."""
    match = re.search(r"```reproduce\n(.*?)```", text, re.S)
    if not match:
        raise ConfigError(f"{where} has no ```reproduce block to run")
    block = {key: [] for key in KEYS}
    for line in match.group(1).splitlines():
        word, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not word or word.startswith("#"):
            continue
        if word not in block:
            raise ConfigError(f"{where}: unknown reproduce line {line.strip()!r}; lines start with {', '.join(KEYS)}")
        if word in ("sweep", "tiny"):
            spec, *overrides = shlex.split(rest) or [""]
            block[word].append((spec, overrides))
        elif word in ("run", "tiny-run"):
            run_name, _, command = rest.partition(" ")
            if "{json}" not in command:
                raise ConfigError(f"{where}: {word} {run_name} must write its JSON to {{json}}: {command!r}")
            block[word].append((run_name, command.strip()))
        else:
            block[word].append(claims_lib.parse(rest))
    return block


def reproduce(name: str, *, tiny: bool, workdir: str | None, parallel: int, overrides: list[str]) -> int:
    name = name.rstrip("/")  # as a shell completes a folder's name
    block = read_block(name)
    out = Path(workdir or f"runs/reproduce/{name}{'-tiny' if tiny else ''}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--workdir {out} is a file; a reproduction's folder holds its runs and results")
    title = f"experiments/{name}{' (tiny)' if tiny else ''}"
    sweep_folders.refuse_a_run_or_an_artifact(out, "--workdir", "the reproduction")
    return run_block(block, out, tiny=tiny, parallel=parallel, overrides=overrides, title=title)


def run_block(
    block: dict, out: Path, *, tiny: bool, parallel: int = 1, overrides: list[str] = (), title: str = ""
) -> int:
    """Runs a parsed block's sweeps and commands into `out`, judges its claims; 0 when all hold."""
    sweeps, runs = block["tiny" if tiny else "sweep"], block["tiny-run" if tiny else "run"]
    claims = block["tiny-expect" if tiny else "expect"]
    if not sweeps and not runs:
        raise ConfigError(f"{title}: the reproduce block names no {'tiny' if tiny else 'sweep'} config or run")
    if overrides and not sweeps:  # said, not refused: callers pass the same quieting flags to every block
        print(
            f"{title}: --config overrides apply to a block's sweeps; it has none, so they are not used", file=sys.stderr
        )
    _check_owner(out, title)
    minimum = 1 if tiny else claims_lib.MIN_SEEDS
    plans = [
        _plan_sweep(s, [*extra, *overrides], out, i if len(sweeps) > 1 else None) for i, (s, extra) in enumerate(sweeps)
    ]
    planned = [row for _, _, rows in plans for row in rows]
    planned += [{"values": {"run": n}, "seed": s} for n, c in runs if "{seed}" in c for s in RUN_SEEDS[tiny]]
    for claim in claims:
        sides = (claim.left, claim.right)
        read = [side.metric for side in sides if isinstance(side, (claims_lib.Side, claims_lib.Scaled))]
        if isinstance(claim.right, claims_lib.Front):  # a front's bars and where it is read, too
            read += [claim.right.metric, claim.right.at]
        for metric in read:
            if metric.startswith(NON_TEST_PREFIXES):
                raise ConfigError(f"claim {claim.text!r} reads {metric!r}; claims are judged on test_ columns")
        claims_lib.check_design(claim, planned, minimum)
    for _, points, _ in plans:  # before anything trains: each point would be refused, then its claims replaced
        for point in points:
            if (conflict := sweep_folders.config_conflict(point)) is not None:
                raise ConfigError(
                    f"{point.workdir} holds a run that this reproduction cannot continue ({conflict}); "
                    "use a new --workdir, or the flags it was run with"
                )
        for point in points:
            sweep.refresh_status(point)
        untrained = [p for p in points if p.status not in ("done", "running")]
        if refused := sweep_checks.unreachable_budgets(untrained):  # what `adaptive train` would refuse at its start
            first = next(p for p in untrained if p.index in refused)
            raise ConfigError(f"sweep point {first.workdir}: {refused[first.index]}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot make --workdir {out}: {e.strerror}") from None
    if title:
        (out / OWNER_FILE).write_text(title + "\n")
    rows = []
    for spec, points, planned_rows in plans:
        points[0].workdir.parent.mkdir(parents=True, exist_ok=True)
        sweep.run(spec, points, parallel)
        summary = sweep_summary.summarize(points, points[0].workdir.parent)
        for row, plan in zip(summary, planned_rows, strict=True):
            row["values"], row["seed"] = plan["values"], plan["seed"]
        rows += held_out.score_on_test(points, _train_columns(points, summary))
    for run_name, command in runs:
        rows += _run_command(run_name, command, out, RUN_SEEDS[tiny])
    judged = [claims_lib.judge(c, rows, minimum) for c in claims]
    (out / "results.md").write_text(markdown_table(*held_out.table(rows)))
    (out / "claims.json").write_text(json.dumps(judged, indent=1) + "\n")
    print(f"\nclaims of {title} (95% intervals over seeds; sweep columns on the test split):")
    for c in judged:
        print(claims_lib.verdict_line(c))
    print(f"wrote {out / 'results.md'}, {out / 'claims.json'}")
    return 0 if all(c["holds"] for c in judged) and all(r["status"] == "done" for r in rows) else 1


def _check_owner(out: Path, title: str) -> None:
    """A folder holds one reproduction: another's (or the tiny run's, for the full one) points and
    JSON files would be resumed as this one's, and its results mixed with them."""
    if not title:
        return
    try:
        owner = (out / OWNER_FILE).read_text().strip()
    except OSError:
        if out.is_dir() and any(out.iterdir()):  # older than the file, or not a reproduction's at all
            raise ConfigError(
                f"{out} holds files but no {OWNER_FILE} to say whose; if they are {title}'s, "
                f"run `echo '{title}' > {out / OWNER_FILE}` to resume it, or give it a --workdir of its own"
            ) from None
        return
    if owner != title:
        raise ConfigError(f"{out} holds a reproduction of {owner}; give {title} a --workdir of its own")


def _plan_sweep(spec: str, overrides: list[str], out: Path, index: int | None):
    """(full spec, points, planned rows) of one sweep line; planned rows carry each point's values
    and seed (from its full config), known before anything trains."""
    file, sep, arg = spec.partition(":")
    stem = Path(file).stem
    full = str(ROOT / file) + sep + arg  # the README's paths are relative to the repository
    where = out if index is None else out / f"{index}-{stem}{'-' + arg if arg else ''}"
    points = sweep.load_points(full, where, overrides)
    planned = []
    for p in points:
        seed = p.values["seed"] if "seed" in p.values else config_lib.load(full, p.overrides).seed
        planned.append({"values": {**p.values, "config": stem}, "seed": seed})
    return full, points, planned


def _train_columns(points: list, rows: list[dict]) -> list[dict]:
    """`rows` with TRAIN_COLUMNS on every finished point that logged them."""
    for point, row in zip(points, rows, strict=True):
        if row["status"] != "done":
            continue
        logged = [r for r in read_jsonl(point.workdir / "metrics.jsonl") if r["split"] == "train"]
        row.update({column: logged[-1][key] for key, column in TRAIN_COLUMNS.items() if logged and key in logged[-1]})
    return rows


def _run_command(run_name: str, command: str, out: Path, seeds: tuple[int, ...]) -> list[dict]:
    """Rows from a command's JSON, run (from the repository root) once per seed if it holds
    {seed}; an existing JSON file is read, not remade."""
    rows = []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for seed in seeds if "{seed}" in command else (None,):
        label = run_name if seed is None else f"{run_name}-seed{seed}"
        path = (out / f"{label}.json").resolve()
        if not path.is_file():
            line = command.replace("{json}", shlex.quote(str(path))).replace("{seed}", str(seed))
            code, kept = _run_shell(line, env), ""
            if code != 0 and path.is_file():  # a failed command's JSON is not a result: rerun on resume
                path.replace(path.with_name(f"{label}.failed.json"))
                kept = f" (its JSON kept as {label}.failed.json)"
            if code != 0 or not path.is_file():
                detail = f"exit {code}{kept}" if code else f"wrote no {path}"
                rows.append(
                    {"point": label, "status": "failed", "values": {"run": run_name}, "seed": seed, "detail": detail}
                )
                continue
        found = _read_rows(path, label)
        for item in found:
            scalars = {k: v for k, v in item.items() if isinstance(v, (int, float, str, bool))}
            row_seed = seed if seed is not None else scalars.get("seed")
            rows.append(
                {"point": label, "status": "done", "values": {**scalars, "run": run_name}, "seed": row_seed, **scalars}
            )
    return rows


def _read_rows(path: Path, label: str) -> list[dict]:
    """The rows of a finished command's JSON (an object or a list of them); a damaged file is a
    one-line error, since a resume reads it rather than running the command again."""
    try:
        found = json.loads(path.read_text())
    except ValueError as e:
        found = e
    items = found if isinstance(found, list) else [found]
    if not items or not all(isinstance(item, dict) for item in items):
        why = f"not JSON ({found})" if isinstance(found, ValueError) else "not an object or a list of objects"
        raise ConfigError(f"{path} is {why}; delete it to run {label} again")
    return items


def _run_shell(line: str, env: dict) -> int:
    """`line`'s exit status, run in a process group of its own: on Ctrl-C here the whole group
    (the script and what it started) is stopped too, not left writing results."""
    process = subprocess.Popen(line, shell=True, cwd=ROOT, env=env, start_new_session=True)
    try:
        return process.wait()
    except BaseException:
        _stop_group(process)
        raise


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the group (a training run saves on it), SIGKILL to what is left 30 s on."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        if not _signal_group(process.pid, sig):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reaps the shell, which stays in the group until reaped
            if not _signal_group(process.pid, 0):
                return
            time.sleep(0.1)


def _signal_group(group: int, sig: int) -> bool:
    """Sends `sig` to process group `group`; False when no process is left in it."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True
