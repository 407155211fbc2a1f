"""`adaptive bench serve-lm --artifact LM_ART --small LM_ART2 --json OUT`: generation serving
policies under the same open-loop streaming load, side by side. The fallback may be an operating
point instead (`--small-point int8,0.5`: that point of LM_ART2, or of LM_ART without `--small`).

Policies, each its own `adaptive serve` process on the same artifacts:

    full depth               every request at full depth, queued for a slot however long
    full depth + shedding    the same, a request whose wait breaks the TTFT SLA rejected
    fixed threshold          every request at the artifact's default (certified) exit threshold
    controller               requests ask for full depth; the controller degrades slots along the
                             ladder, limits prefills between steps, rejects (adaptive)
    controller + fallback    the same, and requests it would keep waiting go to the fallback
                             (the small model, or an operating point): run only with `--small`
                             or `--small-point` (without either it is left out, as `bench
                             serve` leaves out its fallback policies)

Patterns: poisson at the base rate, gamma (coefficient of variation 3) at it, and a spike to 3x
it for the middle third. The base rate defaults to 0.6 of what full depth completes when every
slot is busy (a burst of 20 x slots requests, measured first), so the spike offers 1.8x that.
Each (policy, pattern) runs `repeats` times with the same seeds for every policy; the headline
figures (violations, p99 TPOT, goodputs, agreement) are the mean over the runs with a 95%
t-interval; the other percentiles are the mean of the runs' own; counts are summed. Agreement
is with the primary model's own greedy tokens at full depth, computed offline from the artifact
for every request. `tiny` checks the pipeline in seconds. The table's columns are the rows' JSON
keys, opened by a line with the SLAs and the rate they ran at.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import uvloop

from adaptive.bench import lm_loadgen
from adaptive.bench.results import write_json
from adaptive.bench.serve import interval_legend, start_server
from adaptive.config import ConfigError
from adaptive.evaluation.intervals import mean_interval
from adaptive.evaluation.tables import print_table
from adaptive.inference.lm_export import load_lm_artifact

PATTERNS = ("poisson", "gamma", "spike")
HEADLINE = ("violation_rate", "tpot_p99_ms", "agreement_weighted_goodput", "goodput_tokens_per_s", "agreement")
FRACTIONS = ("violation_rate", "agreement")
FULL = 2.0  # a threshold no confidence reaches: every block
FALLBACK = "controller + fallback"  # the policy that needs --small or --small-point


def policies(artifact: str, small: str | None, meta: dict, small_point: str | None = None):
    """{policy: (its `adaptive serve` arguments, the exit threshold its requests ask for)}."""
    fixed = float(meta["exit_threshold"]["default"])
    fallback = (["--fallback", small] if small else []) + (["--fallback-point", small_point] if small_point else [])
    return {
        "full depth": (["--artifact", artifact, "--policy", "static"], FULL),
        "full depth + shedding": (["--artifact", artifact, "--policy", "shed"], FULL),
        f"fixed threshold {fixed:g}": (["--artifact", artifact, "--policy", "static"], fixed),
        "controller": (["--artifact", artifact, "--policy", "adaptive"], FULL),
        "controller + fallback": (["--artifact", artifact, *fallback, "--policy", "adaptive"], FULL),
    }


def validation_prompts(meta: dict, count: int = 256) -> list[np.ndarray]:
    """The first bytes of `count` windows spread over the validation split (ASCII only: the
    server takes text), as many bytes as a prompt may have."""
    from adaptive import config as config_lib
    from adaptive.inference.scoring import split_batches

    cfg = config_lib.from_dict(meta["config"])
    room = int(meta["prompt_capacity"]) - 1
    prompts = []
    for batch, real in split_batches(cfg, "validation", 64, count * 2, spread=True):
        for x in batch["x"][real]:
            head = np.asarray(x[:room], np.int32)
            if (head < 128).all() and (head > 0).all():
                prompts.append(head)
    return prompts[:count]


def references(artifact: str, prompts: list[np.ndarray]) -> list[list[int]]:
    """The full model's greedy tokens for each prompt (BOS first), up to the artifact's new
    capacity, ending at EOS."""
    exported, meta = load_lm_artifact(artifact)
    capacity, new = int(meta["prompt_capacity"]), int(meta["new_capacity"])
    bos = meta["tokenizer"]["bos"]
    out = []
    for start in range(0, len(prompts), 64):
        part = prompts[start : start + 64]
        n = len(part)
        padded = np.zeros((n, capacity), np.int32)
        lengths = np.zeros((n,), np.int32)
        for i, p in enumerate(part):
            ids = [bos, *p.tolist()]
            padded[i, : len(ids)], lengths[i] = ids, len(ids)

        def one(value, dtype, n=n):
            return np.full((n,), value, dtype)

        limits = [one(new, np.int32), one(meta["caps"]["layers"], np.int32), one(1 << 20, np.int32)]
        limits += [one(np.inf, np.float32), one(FULL, np.float32), one(0, np.float32), one(0, np.float32)]
        limits += [one(1, np.float32), one(0, np.uint32), one(False, bool)]
        tokens, count, *_ = exported.call(padded, lengths, *limits)
        out += [np.asarray(tokens)[i, : int(count[i])].tolist() for i in range(n)]
    return out


def _body(prompt: np.ndarray, tokens: int, threshold: float | None, priority: int) -> dict:
    """A streamed request; `threshold` None: none named (a model without exits refuses one)."""
    text = bytes(prompt.astype(np.uint8).tolist()).decode("ascii")
    body = {"prompt": text, "max_new_tokens": tokens, "priority": priority, "stream": True}
    return body if threshold is None else {**body, "threshold": threshold}


def _metrics(url: str) -> str:
    return urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()


def capacity(prompts, server_args: list[str], slots: int, new_tokens: int, full: float | None = FULL) -> float:
    """Requests per second full depth completes while every slot stays busy: a burst of
    20 x slots requests at once, with the benchmark's own prompts and lengths."""
    proc, url = start_server(server_args)
    try:
        n = 20 * slots
        _, picks = lm_loadgen.requests_of(prompts, "poisson", 1.0, 10 * n, seed=99, new_tokens=new_tokens)
        bodies = [_body(prompt, tokens, full, 0) for _, prompt, tokens, _ in picks[:n]]
        records = uvloop.run(lm_loadgen.run(url, np.zeros(len(bodies)), bodies))
        answered = [r for r in records if r["status"] in lm_loadgen.ANSWERED]
        if not answered:
            raise RuntimeError("full depth answered none of the capacity burst; see the server's log")
        return len(answered) / (max(r["done"] for r in answered) - min(r["sent"] for r in records))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(
    artifact: str,
    small: str | None,
    *,
    small_point: str | None = None,
    ttft_ms: float,
    tpot_ms: float,
    rate: float | None = None,
    duration: float = 12.0,
    repeats: int = 3,
    out_dir: str,
    json_out: str | None = None,
    tiny: bool = False,
    only: list[str] | None = None,
) -> list[dict]:
    """The rows of every policy (or of those named in `only`) under every pattern."""
    if repeats < 1 or duration <= 0:
        raise ConfigError(f"--repeats must be >= 1 and --duration > 0; got {repeats}, {duration:g}")
    _, meta = load_lm_artifact(artifact)
    if small:
        load_lm_artifact(small)  # refused now, in one line, if it is not a language model's artifact
    slots, new_tokens = int(meta["slots"]["count"]), int(meta["new_capacity"])
    exits = bool(meta["config"]["lm"]["exits"])  # without, a request naming a threshold is refused
    every = policies(artifact, small, meta, small_point)
    fallback = " ".join(filter(None, (small or artifact, small_point)))
    if unknown := set(only or ()) - set(every):
        raise ConfigError(f"unknown policies {sorted(unknown)}; known: {', '.join(every)}")
    if not small and not small_point:  # no fallback to run it with
        if FALLBACK in (only or ()):
            raise ConfigError(
                f"the {FALLBACK!r} policy needs its fallback: --small LM_ART2, --small-point PRECISION,PRUNE, or both"
            )
        del every[FALLBACK]
    chosen = {name: every[name] for name in every if not only or name in only}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = validation_prompts(meta, 32 if tiny else 256)
    sla = ["--ttft-ms", f"{ttft_ms:g}", "--tpot-ms", f"{tpot_ms:g}", "--max-waiting", "100000"]
    if tiny:
        duration, repeats, rate = 1.0, 1, rate or 4.0
    elif rate is None:
        full_rate = capacity(prompts, [*every["full depth"][0], *sla], slots, new_tokens, FULL if exits else None)
        rate = 0.6 * full_rate
        print(
            f"full depth completes {full_rate:.2f} requests/s with every slot busy; base rate {rate:.2f}/s", flush=True
        )
    loads = {  # the same schedules and prompts for every policy
        (repeat, pattern): lm_loadgen.requests_of(prompts, pattern, rate, duration, repeat, new_tokens=new_tokens)
        for repeat in range(repeats)
        for pattern in PATTERNS
    }
    asked = sorted({(pick, len(prompt)) for _, picks in loads.values() for pick, prompt, _, _ in picks})
    full = dict(zip(asked, references(artifact, [prompts[p][:n] for p, n in asked]), strict=True))
    rows, excerpts = [], {}
    for policy, (server_args, threshold) in chosen.items():
        proc, url = start_server([*server_args, *sla])
        per_pattern = {p: [] for p in PATTERNS}
        try:
            for repeat in range(repeats):
                for pattern in PATTERNS:
                    times, picks = loads[repeat, pattern]
                    named = threshold if exits else None
                    bodies = [_body(prompt, tokens, named, priority) for _, prompt, tokens, priority in picks]
                    records = uvloop.run(lm_loadgen.run(url, times, bodies))
                    reference = [full[pick, len(prompt)][:tokens] for pick, prompt, tokens, _ in picks]
                    per_pattern[pattern].append(
                        lm_loadgen.summarize(records, reference, ttft_ms=ttft_ms, tpot_ms=tpot_ms, duration_s=duration)
                    )
            excerpts[policy] = _metrics(url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        for pattern, runs in per_pattern.items():
            rows.append(_row(policy, pattern, runs, rate, ttft_ms, tpot_ms))
            if "fallback" in policy:
                rows[-1]["fallback"] = fallback
        print(f"{policy}: done", flush=True)
    (out / "metrics_excerpts.json").write_text(json.dumps(excerpts, indent=1) + "\n")
    print_rows(rows)
    write_json(json_out, rows)
    return rows


def _row(policy: str, pattern: str, runs: list[dict], rate: float, ttft_ms: float, tpot_ms: float) -> dict:
    row = {"policy": policy, "pattern": pattern, "rate_rps": rate, "ttft_sla_ms": ttft_ms, "tpot_sla_ms": tpot_ms}
    row["repeats"] = len(runs)
    for key in runs[0]:
        values = [r[key] for r in runs]
        finite = [v for v in values if np.isfinite(v)]  # a run with no answers has no percentile
        if key in HEADLINE and not finite:
            row[key], row[f"{key}_lo"], row[f"{key}_hi"], row[f"{key}_runs"] = float("nan"), None, None, values
        elif key in HEADLINE:
            interval = mean_interval(finite)
            low, high = interval.low, interval.high
            if key in FRACTIONS and low is not None:  # a share's interval stays within [0, 1]
                low, high = max(low, 0.0), min(high, 1.0)
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = interval.mean, low, high
            row[f"{key}_runs"] = values
        elif key.startswith(("count_", "sent")):
            row[key] = int(sum(values))
        else:
            row[key] = float(np.nanmean(values))  # percentiles: the mean of the runs' own
    return row


def _interval(row: dict, key: str, digits: int = 3) -> str:
    if row[f"{key}_lo"] is None:
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} [{row[f'{key}_lo']:.{digits}f}, {row[f'{key}_hi']:.{digits}f}]"


def print_rows(rows: list[dict]) -> None:
    """The console table, its columns the rows' JSON keys, opened by the SLAs and rate it ran at."""
    first = rows[0]
    print(
        f"SLA: TTFT {first['ttft_sla_ms']:g} ms, TPOT {first['tpot_sla_ms']:g} ms; base rate {first['rate_rps']:.3g} "
        f"requests/s (the spike: 3x); {', '.join(HEADLINE)}: mean over {first['repeats']} repeats "
        f"{interval_legend(first['repeats'])}; ttft_p99_ms, mean_layers: the mean of the repeats' own"
    )
    shown = [
        {"policy": r["policy"], "pattern": r["pattern"], "violation_rate": _interval(r, "violation_rate"),
         "tpot_p99_ms": _interval(r, "tpot_p99_ms", 1), "ttft_p99_ms": round(r["ttft_p99_ms"], 1),
         "goodput_tokens_per_s": _interval(r, "goodput_tokens_per_s", 1), "agreement": _interval(r, "agreement"),
         "agreement_weighted_goodput": _interval(r, "agreement_weighted_goodput", 1),
         "count_rejected": r["count_rejected"], "count_fallback": r["count_fallback"],
         "mean_layers": round(r["mean_layers"], 2)}
        for r in rows
    ]  # fmt: skip
    print_table(shown, list(shown[0]))
