"""`adaptive bench serve --artifact ART --small ART2 --json OUT`: serving policies under the same
open-loop arrival schedules, on this machine, side by side.

Policies: the full model at full depth, the small model, and the adaptive model at a fixed step
budget, each both queueing every request (`--policy static`) and with deadline shedding
(`--policy shed`: a request that cannot finish within its deadline at that policy's measured
service time is rejected), and the adaptive model with the controller and the fallback ladder;
when ART has operating points (`adaptive export --precision/--prune`), the controller with a
ladder of those points as its fallbacks (`--fallback-point all`). Without `--small` the
small-model policies are left out, and without a fallback of either kind the controller runs
alone (`adaptive + controller`: fewer steps under load, then rejection). `--policies` runs only
those named.
Each runs as its own `adaptive serve` process; each policy's load comes from one `python -m
adaptive.bench.loadgen` process that runs every pattern `repeats` times (the same seeds for every
policy). The base rate defaults to what full depth (queueing) sustains, measured first; the spike
goes to 3x it. OUT holds one row per (policy, pattern): effective accuracy and SLA violation
rate as a mean over the repeats with a 95% t-interval, the rest over the repeats' requests
pooled (`serve_summary`). Plots: latency CDFs per pattern, and the budget the controller chose
over time (the first repeat).

Records and plots go in `out_dir` (`--out`, default runs/bench-serve under the current folder).
A language model's artifact is refused with a pointer to `adaptive bench serve-lm`. The table's
columns are the rows' JSON keys, opened by a line with the SLA and rate they ran at.

`tiny=True` (`--tiny`) checks the pipeline end to end in seconds on tiny artifacts: 1 s of load
per pattern and repeat, at `rate` or 40 requests/s, no probe of the sustainable rate. Its
numbers are not a measurement.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from adaptive.bench.loadgen import PATTERNS, summarize
from adaptive.bench.results import write_json
from adaptive.bench.serve_summary import pattern_row
from adaptive.config import ConfigError
from adaptive.evaluation.tables import print_table
from adaptive.inference.artifact_meta import LM_FORMAT, parse_meta, read_meta
from adaptive.serving.launch import rung_name
from adaptive.serving.point_meta import ladder_points, point_meta

PROBE_REQUESTS = 100  # requests per probe (at least): a p99 over 30 requests is their maximum
BASE = "static full depth"  # the policy whose sustainable rate is the base rate
TINY_DURATION_S, TINY_RATE = 1.0, 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "adaptive.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-500:]}")
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not come up in 120 s")


def _load(url: str, artifact: str, patterns, rate: float, duration: float, repeats: int, out: Path) -> list[dict]:
    """Every pattern of `patterns` run `repeats` times against URL by one load generator: its runs."""
    command = [
        sys.executable, "-m", "adaptive.bench.loadgen", "--url", url, "--artifact", artifact,
        "--pattern", ",".join(patterns), "--rate", f"{rate:g}", "--duration", f"{duration:g}",
        "--repeats", str(repeats), "--priorities", "3", "--out", str(out),
    ]  # fmt: skip
    runs = repeats * len(patterns)
    subprocess.run(command, check=True, timeout=runs * (duration * 10 + 60) + 120)
    return json.loads(out.read_text())


def _flops(artifact: str, model: str) -> dict[str, list[float]]:
    """FLOPs at each step budget of `artifact` served as `model`, and at each smaller expert budget."""
    meta = read_meta(artifact)
    by_k = meta.get("flops_at_expert_budgets", {})
    return {model: meta["compute_at_steps"]["flops"], **{f"{model}@k{k}": f for k, f in by_k.items()}}


def _point_flops(artifact: str) -> dict[str, list[float]]:
    """FLOPs at each step budget of every operating point of `artifact` that a `--fallback-point
    all` server runs as a fallback rung, by the rung's name ({} without points)."""
    meta = read_meta(artifact)
    points = ladder_points(meta)
    return {rung_name(p, len(points)): point_meta(meta, p, artifact)["compute_at_steps"]["flops"] for p in points}


def _policies(artifact: str, small: str | None, fixed_budget: int, sla_ms: float, max_batch: int) -> dict:
    """{policy: (its `adaptive serve` arguments, the FLOPs tables of the models it answers with)}."""
    flops = _flops(artifact, "primary")
    policies = {}
    for mode, suffix in (("static", ""), ("shed", " + shedding")):
        policies[f"static full depth{suffix}"] = (["--artifact", artifact, "--policy", mode], flops)
        if small:
            policies[f"static small model{suffix}"] = (
                ["--artifact", small, "--policy", mode],
                _flops(small, "primary"),
            )
        policies[f"adaptive, budget {fixed_budget}{suffix}"] = (
            ["--artifact", artifact, "--policy", mode, "--default-budget", str(fixed_budget)],
            flops,
        )
    if small:
        policies["adaptive + controller + fallback"] = (
            ["--artifact", artifact, "--fallback", small, "--policy", "adaptive"],
            {**flops, **_flops(small, "fallback")},
        )
    if points := _point_flops(artifact):
        policies["adaptive + controller + point ladder"] = (
            ["--artifact", artifact, "--fallback-point", "all", "--policy", "adaptive"],
            {**flops, **points},
        )
    if not small and not points:  # the controller still runs: fewer steps under load, then rejection
        policies["adaptive + controller"] = (["--artifact", artifact, "--policy", "adaptive"], flops)
    # The queueing baselines take every request: under a spike thousands wait at once, each on
    # its own connection, and the benchmark measures that queue, not the server's connection limit.
    common = ["--sla-ms", f"{sla_ms:g}", "--max-batch", str(max_batch), "--max-connections", "100000"]
    return {name: ([*server_args, *common], f) for name, (server_args, f) in policies.items()}


def _report_grouping(artifact: str, out: Path, repeats: int = 100) -> None:
    """OUT/grouping.json and a line: what grouping a batch by step budget gains (`grouping_gain`)."""
    gain = grouping_gain(artifact, repeats)
    (out / "grouping.json").write_text(json.dumps(gain, indent=1) + "\n")
    print(
        f"grouping by budget: requests allowed 1 step answered after {gain['grouped_tight_ms']:.2f} ms instead of "
        f"{gain['one_batch_tight_ms']:.2f} ms ({gain['tight_answered_sooner']:.1f}x sooner); whole batch "
        f"{gain['grouped_all_ms']:.2f} vs {gain['one_batch_all_ms']:.2f} ms"
    )


def _run_policies(artifact: str, policies: dict, rate: float, sla_ms: float, duration: float, repeats: int, out: Path):
    """Every policy's server under every arrival pattern, `repeats` times, at `rate`: one row per
    (policy, pattern), and the first repeat's records of each (for the plots)."""
    rows, traces = [], {}
    for policy, (server_args, policy_flops) in policies.items():
        proc, url = start_server(server_args)
        try:
            runs = _load(url, artifact, PATTERNS, rate, duration, repeats, out / "runs.json")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        for pattern in PATTERNS:
            mine = [r for r in runs if r["pattern"] == pattern]
            row = pattern_row(mine, sla_ms, duration, policy_flops)
            rows.append({"policy": policy, "pattern": pattern, "rate_rps": rate, "sla_ms": sla_ms, **row})
            traces[policy, pattern] = mine[0]["records"]
        print(f"{policy}: done", flush=True)
    return rows, traces


def _interval(row: dict, key: str) -> str:
    if row[key + "_lo"] is None:
        return f"{row[key]:.3f} [n/a]"
    return f"{row[key]:.3f} [{row[key + '_lo']:.3f}, {row[key + '_hi']:.3f}]"


def interval_legend(repeats: int) -> str:
    return "[95% t-interval, JSON *_lo and *_hi]" if repeats > 1 else "(1 repeat: no interval)"


def print_rows(rows: list[dict]) -> None:
    """The console table: the headline means with their 95% intervals, rejections, latency; its
    columns the rows' JSON keys, opened by the SLA and the rate it ran at."""
    first = rows[0]
    spread = interval_legend(first["repeats"])
    print(
        f"SLA {first['sla_ms']:g} ms, base rate {first['rate_rps']:g} requests/s (the spike: 3x); "
        f"effective_accuracy and sla_violation_rate: mean over {first['repeats']} repeats {spread}; "
        "p50_ms, p95_ms, p99_ms over every repeat's requests pooled"
    )
    shown = [
        {"policy": r["policy"], "pattern": r["pattern"], "effective_accuracy": _interval(r, "effective_accuracy"),
         "sla_violation_rate": _interval(r, "sla_violation_rate"), "rejected_fraction": r["rejected_fraction"],
         "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "p99_ms": r["p99_ms"]}
        for r in rows
    ]  # fmt: skip
    print_table(shown, list(shown[0]))


def run(
    artifact: str,
    small: str | None,
    *,
    sla_ms: float,
    rate: float | None,
    duration: float,
    fixed_budget: int,
    out_dir: str,
    json_out: str | None,
    max_batch: int = 16,
    repeats: int = 3,
    tiny: bool = False,
    policies: list[str] | None = None,
) -> list[dict]:
    """The rows of every policy (or of those named in `policies`) under every pattern."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {repeats}")
    for flag, path in (("--artifact", artifact), ("--small", small)):
        if path is not None:
            _classifier_artifact(flag, path)
    every = _policies(artifact, small, fixed_budget, sla_ms, max_batch)
    if unknown := set(policies or ()) - set(every):
        raise ConfigError(f"unknown policies {sorted(unknown)}; known: {', '.join(every)}")
    meta = read_meta(artifact)
    cap, static = meta["caps"]["steps"], (meta.get("config") or {}).get("halting", {}).get("policy") == "none"
    fixed = [name for name in every if name.startswith("adaptive, budget") and (policies is None or name in policies)]
    if fixed and fixed_budget > cap:  # its rows would be full depth under a smaller budget's name
        raise ConfigError(f"--fixed-budget {fixed_budget} is past the artifact's step cap {cap}")
    if fixed and static and fixed_budget < cap:  # its server would refuse every request
        raise ConfigError(
            f"--fixed-budget {fixed_budget} is below the static artifact's {cap} steps: give --fixed-budget {cap}, "
            "or leave the fixed-budget policies out with --policies"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _report_grouping(artifact, out, 10 if tiny else 100)
    policies = {name: every[name] for name in every if policies is None or name in policies}
    if tiny:
        duration, rate = TINY_DURATION_S, rate or TINY_RATE
    elif rate is None:
        server_args, policy_flops = every[BASE]
        rate = sustainable_rate(artifact, server_args, sla_ms, out, policy_flops, duration)
        print(f"base rate: {rate:g} requests/s (what {BASE} sustains within the SLA)", flush=True)
    rows, traces = _run_policies(artifact, policies, rate, sla_ms, duration, repeats, out)
    target = throughput_budget(artifact)
    if target is not None:
        rows = throughput_verdict(rows, target, rate)
    print_rows(rows)
    write_json(json_out, rows)
    from adaptive.bench.serve_plots import budget_over_time, latency_cdfs

    latency_cdfs(traces, sla_ms, out / "latency_cdf.png")
    budget_over_time(traces, out / "budget_over_time.png")
    print(f"wrote {out / 'latency_cdf.png'}, {out / 'budget_over_time.png'}")
    return rows


def _classifier_artifact(flag: str, path: str) -> None:
    """A language model's artifact is served by `bench serve-lm`: said in one line, not as a
    format error from deep in the schema check."""
    if parse_meta(Path(path)).get("format") == LM_FORMAT:
        raise ConfigError(
            f"{flag} {path} is a language model's artifact; this benchmark serves classifiers: "
            f"use adaptive bench serve-lm --artifact {path}"
        )


def throughput_budget(artifact: str) -> float | None:
    """The artifact's throughput budget (budget.unit=requests_per_s), None without one."""
    budget = (read_meta(Path(artifact)).get("config") or {}).get("budget") or {}
    return float(budget["target"]) if budget.get("unit") == "requests_per_s" and budget.get("target") else None


def throughput_verdict(rows: list[dict], target: float, rate: float) -> list[dict]:
    """Each row marked with whether it sustained the throughput budget: answers on time per
    second (goodput) at or above `target` requests/s. An offered rate below the target cannot
    show it: said once, and every row is marked not met."""
    if rate < target:
        print(
            f"the offered rate {rate:g}/s is below the throughput budget {target:g}/s: pass --rate {target:g} or more"
        )
    for row in rows:
        row["throughput_budget_rps"] = target
        row["throughput_met"] = bool(rate >= target and row["goodput_rps"] >= target)
        print(
            f"{row.get('policy', '?')} / {row.get('pattern', '?')}: {row['goodput_rps']:.1f} answers on time a second "
            f"against a budget of {target:g}: {'met' if row['throughput_met'] else 'not met'}"
        )
    return rows


def sustainable_rate(
    artifact: str, server_args: list[str], sla_ms: float, out: Path, flops: dict, duration: float
) -> float:
    """The highest Poisson rate (of a doubling ladder from 5/s, then bisected) whose p99 stays
    within the SLA with under 1% violations, for one policy; probes as long as a pattern's run
    (`duration`: a rate a server holds for a short probe may still grow its queue slowly over a
    whole run) and of at least 100 requests, and a probe that fails is run once more: at 100
    requests one stray late answer fails it, while a rate beyond the policy's fails every
    time."""
    proc, url = start_server(server_args)

    def probe(rate: float) -> bool:
        seconds = max(duration, PROBE_REQUESTS / rate)
        result = _load(url, artifact, ["poisson"], rate, seconds, 1, out / "probe.json")[0]
        m = summarize(result["records"], np.asarray(result["labels"]), sla_ms, seconds, flops)
        return m["p99_ms"] <= sla_ms and m["sla_violation_rate"] < 0.01

    def holds(rate: float) -> bool:
        return probe(rate) or probe(rate)

    try:  # from 5 requests/s: a model heavy for this machine may sustain only tens
        low, high = 0.0, 5.0
        while holds(high) and high < 20000:
            low, high = high, high * 2
        for _ in range(3):
            mid = (low + high) / 2
            low, high = (mid, high) if holds(mid) else (low, mid)
        if low == 0.0:  # nothing held: the least rate tried stands in, so that the patterns can run
            print(f"warning: no rate down to {high:g} requests/s holds the SLA", flush=True)
        return low or high
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def grouping_gain(artifact: str, repeats: int = 100) -> dict:
    """Inside one batch of 16, half the requests allowed 1 step and half the full cap: when the
    tight half is answered as one batch, and when the batch runs grouped by budget (tightest
    first). Medians after 20 warm-up rounds, interleaved."""
    import time as clock

    from adaptive.bench.loadgen import examples
    from adaptive.serving.engine import Engine

    engine = Engine.from_artifact(artifact, buckets=(1, 4, 8, 16))
    x = examples(engine.meta)[0][:16]
    budget = np.array([1, engine.cap] * 8, np.int32)
    times = {"one_batch_tight": [], "grouped_tight": [], "one_batch_all": [], "grouped_all": []}
    for _ in range(repeats + 20):
        start = clock.perf_counter()
        plain = engine.run(x, budget)
        times["one_batch_tight"].append(plain.done_s[budget == 1].max() - start)
        times["one_batch_all"].append(plain.done_s.max() - start)
        start = clock.perf_counter()
        grouped = engine.run_grouped(x, budget)
        times["grouped_tight"].append(grouped.done_s[budget == 1].max() - start)
        times["grouped_all"].append(grouped.done_s.max() - start)
    ms = {f"{k}_ms": 1e3 * float(np.median(v[20:])) for k, v in times.items()}
    return {**ms, "tight_answered_sooner": ms["one_batch_tight_ms"] / ms["grouped_tight_ms"]}
