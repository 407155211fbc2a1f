"""Where a decode step's time goes on CPU: XLA thunks (the compiled program's kernels) per step.

Traces `adaptive bench generate`'s models (width 128, 4 heads, 16-byte prompts, 64 new tokens at
temperature 1) with jax.profiler, and counts the thunks each decode step runs and their own time
(a thunk's time less the thunks nested in it), grouped by the thunk's name: a generation of 64
new tokens less one of 1, over 63, as `adaptive bench generate` times a step. On a 2-core CPU a
one-token step of this small model is bound by how many kernels it launches, not by its FLOPs,
so the count is the measure to cut. Times under the profiler are inflated by its own cost per
thunk; compare them with each other, not with the bench's.

    python experiments/lm_speed/profile_decode.py --json experiments/lm_speed/decode_profile.json
    python experiments/lm_speed/profile_decode.py --decompose --json experiments/lm_speed/decode_decomposition.json
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax

from adaptive.bench.generate import _calls, _decoder, _model, threshold_for_depth
from adaptive.compute.timing import time_side_by_side

NEW_TOKENS, CALLS = 64, 3
SKIPPED = ("ThunkExecutor", "Threadpool", "Pjit", "ParseArguments", "Execute")


# --decompose: the exit model with every token leaving after its first block (threshold 0: the
# first exit test passes, the three blocks above only write keys and values) and with none
# leaving (threshold 2: every block and every exit test), beside the static models of 1 and 4
# blocks; their differences price an exit test and a block a token skips.
EXTREMES = {"exit, all leave at 1": 0.0, "exit, none leave": 2.0}


CALLS_OF: dict = {}  # (variant, batch): the N-token and 1-token calls profiled, for wall-clock timing


def profile(variant: str, batch: int) -> dict:
    exits = variant.startswith("exit")
    model = _model(128, 4 if exits else int(variant.split()[-1]), 4, 16 + NEW_TOKENS, exits)
    decoder = _decoder(model, NEW_TOKENS)
    if variant in EXTREMES:
        threshold = EXTREMES[variant]
    else:
        threshold = threshold_for_depth(decoder, batch, NEW_TOKENS, 2.5)[0] if exits else 2.0
    full, one, depth = _calls(decoder, batch, NEW_TOKENS, threshold)
    # a decode step is what N new tokens cost beyond 1 (the prefill and the first token cancel)
    (n_full, own_full, kinds_full), (n_one, own_one, kinds_one) = _traced(full), _traced(one)
    steps = CALLS * (NEW_TOKENS - 1)
    by_kind = {k: (kinds_full[k] - kinds_one.get(k, 0.0)) / steps for k in kinds_full}
    CALLS_OF[variant, batch] = full, one
    return {
        "variant": variant,
        "batch": batch,
        "mean_layers": round(depth, 3),
        "thunks_per_step": round((n_full - n_one) / steps, 1),
        "own_us_per_step": round((own_full - own_one) / steps, 1),
        "top_kinds_us_per_step": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]},
    }


def _traced(call) -> tuple[int, float, dict]:
    """(thunks, their own microseconds, own microseconds by kind of thunk) of CALLS calls."""
    for _ in range(3):
        jax.block_until_ready(call())
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        for _ in range(CALLS):
            jax.block_until_ready(call())
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{folder}/plugins/profile/*/perfetto_trace.json.gz")
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    thunks = [
        e
        for e in events
        if e.get("ph") == "X" and not e["name"].startswith("$") and not any(s in e["name"] for s in SKIPPED)
    ]
    own = _own_times(thunks)
    by_kind = collections.Counter()
    for event, time in zip(thunks, own, strict=True):
        by_kind[re.sub(r"[.\d]+$", "", event["name"].removeprefix("end: ").split(".clone")[0])] += time
    return len(thunks), sum(own), by_kind


def _own_times(events: list[dict]) -> list[float]:
    """Each event's duration less its children's (events nest by time within a thread)."""
    own = {}
    threads = collections.defaultdict(list)
    for i, e in enumerate(events):
        threads[(e["pid"], e["tid"])].append(i)
    for indices in threads.values():
        indices.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
        stack: list[int] = []
        for i in indices:
            while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= events[i]["ts"]:
                stack.pop()
            own[i] = events[i]["dur"]
            if stack:
                own[stack[-1]] -= events[i]["dur"]
            stack.append(i)
    return [own[i] for i in range(len(events))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--decompose", action="store_true", help="price an exit test and a skipped block")
    args = parser.parse_args()
    variants = (*EXTREMES, "static 1", "static 4") if args.decompose else ("exit", "static 2", "static 3")
    rows = [profile(variant, batch) for batch in (1, 8) for variant in variants]
    if args.decompose:  # and each step's wall-clock time, untraced, side by side (medians of 15)
        for batch in (1, 8):
            calls = {(v, n): CALLS_OF[v, batch][i] for v in variants for i, n in enumerate((NEW_TOKENS, 1))}
            ms = time_side_by_side(calls, repeats=15)
            for row in rows:
                if row["batch"] == batch:
                    v = row["variant"]
                    row["ms_per_step"] = round((ms[v, NEW_TOKENS] - ms[v, 1]) / (NEW_TOKENS - 1), 4)
    for row in rows:
        print(f"{row['variant']:>20} b {row['batch']}: {row['thunks_per_step']} thunks, {row['own_us_per_step']} us")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
