"""`adaptive export --workdir DIR --out ART`: a trained run as a `jax.export` artifact.

ART/model.jaxexport is the serialized StableHLO of `serve(x, budget)` with the parameters baked
in, a symbolic batch dimension, and the hard caps compiled in (the step budget is clipped to
1..cap inside the graph, experts per token are at most moe.k):

    inputs   x float32[batch, *input_shape], budget int32[batch] (steps, per request)
    outputs  prediction int32[batch], confidence float32[batch] (max softmax),
             steps int32[batch], experts int32[batch] (expert applications; 0 without experts)

A halting model also gets ART/model-b{16,32,64}.jaxexport: the same function compiled for
exactly that batch size, whose loop shrinks to the rows still running where the model's widths
allow (adaptive.nn.compaction, DepthModel.compaction_buckets; a symbolic batch cannot), same
answers; the serving engine uses them for those buckets (MoE models only when their rows are
independent at inference: dropless token choice in blocks). MoE models also get
ART/model-k{k}.jaxexport per smaller expert budget.

ART/meta.json says what it is: config, caps, input spec, the compute of each step budget in
every unit the run can price (FLOPs, MACs; latency p50/p99, cost and energy with a cost model;
FLOPs at each smaller expert budget), the validation accuracy at every (expert budget, step
budget) -- what a server weighs when it must degrade; for experts with capacity also per served
batch size, since tokens of one batch share the experts' slots --, the cost model, package
versions, the blob's SHA-256, and meta.json's own SHA-256 (artifact_meta.py: its schema and
checksum). Loading validates meta.json and checks the checksums before deserializing, so a
corrupted, truncated, swapped or edited file is refused; nothing is pickled. Plain JAX runs it
without this package (README: five lines). Export verifies on the spot that the artifact answers
exactly as the live model does. With `--precision` and `--prune`, ART/point-*.jaxexport hold
the model at other precisions and pruning levels, meta.json's `operating_points` their accuracy,
FLOPs, weight bytes, memory and measured latency (adaptive.evaluation.operating_points).

Export never deletes what it did not write (adaptive/inference/artifact_folder.py), and stages
the artifact in ART.partial, renamed into place once verified: ART is never half-made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive import config as config_lib
from adaptive import data
from adaptive.compute.costmodel import CostModel, CostModelError, fingerprint
from adaptive.compute.flops import flops_model
from adaptive.compute.memory import memory_report
from adaptive.config import step_cap
from adaptive.inference import outcomes
from adaptive.inference.artifact_folder import check_targets, publish, staged_paths, write_staging
from adaptive.inference.artifact_meta import (
    BLOB,
    FORMAT,
    ArtifactError,
    batch_file,
    check_blob,
    check_sealed,
    point_entry,
    read_meta,
    seal,
    variant_file,
)
from adaptive.inference.infer import budgeted_infer, expert_applications
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.inference.restore import Run, load_run
from adaptive.nn.quantize import weight_bytes
from adaptive.workdir.runinfo import package_versions

OUTPUTS = ("prediction", "confidence", "steps", "experts")
# Batch sizes the accuracy table is also scored at for MoE models with capacity: a server's
# batches are small, and the tokens of a batch share the experts' slots, so accuracy depends on
# the batch size. Scored on the split's first examples: batch 1 is one call per example.
SERVED_BATCHES, SERVED_EXAMPLES = (1, 2, 4, 8, 16, 32), 2048
# Batch sizes that also get a function of their own, compiled for exactly that many rows: there a
# halting loop shrinks to the rows still running (adaptive.nn.compaction), which a symbolic batch
# cannot (its bucket sizes are not comparable). The buckets of `adaptive serve` and the engine's
# default; another bucket runs the symbolic function, with the same answers.
COMPACTED_BATCHES = (16, 32, 64)


def serving_function(graphdef: nnx.GraphDef, params: dict, experts: int | None = None):
    """serve(x, budget) -> (prediction, confidence, steps, experts), parameters closed over;
    MoE layers capped at `experts` per token (None: its trained k)."""

    infer = budgeted_infer(graphdef, experts)

    def serve(x_BxD, budget_B):
        out = infer(params, x_BxD, budget_B)
        probs = jax.nn.softmax(out.logits_BxC, -1)
        return (
            jnp.argmax(probs, -1).astype(jnp.int32),
            probs.max(-1),
            out.steps_B.astype(jnp.int32),
            expert_applications(out).astype(jnp.int32),
        )

    return serve


def compute_table(run: Run) -> dict:
    """Compute per request at each step budget 1..cap, in every unit this run can price."""
    cfg, spec = run.cfg, run.spec
    steps = np.arange(1, step_cap(cfg) + 1, dtype=float)
    flops = flops_model(cfg, spec.input_shape, spec.num_classes, batch=1)
    table = {"steps": steps.tolist(), "flops": [float(flops.at_steps(s)) for s in steps]}
    table["macs"] = [f / 2 for f in table["flops"]]
    model = cost_model_of(run)
    if model is not None:
        batch = run.cfg.budget.serving_batch
        table["latency_ms"] = [float(model.latency_ms(s, batch)) for s in steps]
        table["latency_ms_p99"] = [float(model.tail_latency_ms(s, batch)) for s in steps]
        table["cost_per_1k"] = [float(model.cost_per_1k(s, batch)) for s in steps]
        table["energy_j"] = [float(model.energy_j(s, batch)) for s in steps]
    return table


def cost_model_of(run: Run, log=None, *, at_serving_batch: bool = True) -> CostModel | None:
    """The cost model an artifact prices latency, money and energy with: the config's
    (budget.cost_model), else the run folder's cost_model.json (`adaptive calibrate`) where it
    was calibrated for this network at the config's budget.serving_batch (any batch, without
    `at_serving_batch`: the caller checks its own); None otherwise, with a note through `log`
    when a cost_model.json is there but cannot be used."""
    if run.budget is not None and run.budget.cost_model is not None:
        return run.budget.cost_model
    named = run.cfg.budget.cost_model  # named without a target: no Budget was made of it
    path = Path(named) if named else run.workdir / "cost_model.json"
    if not path.is_file():
        return None
    try:
        model = CostModel.load(path, expect_fingerprint=fingerprint(run.cfg, run.spec.input_shape))
        if at_serving_batch:
            model.fit(run.cfg.budget.serving_batch)
    except CostModelError as e:
        if log is not None:
            log(f"note: {path} is not used ({e}); the artifact prices no latency, money or energy")
        return None
    return model


def memory_at_serving_batch(run: Run) -> dict:
    """Device memory of the serving function compiled for the config's `budget.serving_batch`:
    what a `memory_mb` budget is checked against (adaptive.compute.memory)."""
    batch = run.cfg.budget.serving_batch
    x = jax.ShapeDtypeStruct((batch, *run.spec.input_shape), jnp.float32)
    budget = jax.ShapeDtypeStruct((batch,), jnp.int32)
    compiled = jax.jit(serving_function(run.graphdef, run.params)).lower(x, budget).compile()
    return {"batch": batch, **memory_report(compiled, weight_bytes(run.params))}


def experts_table(run: Run) -> dict:
    """FLOPs per request at each step budget for each expert budget k below the trained one."""
    cfg, spec = run.cfg, run.spec
    if not cfg.moe.enabled:
        return {}
    steps = np.arange(1, step_cap(cfg) + 1, dtype=float)
    table = {}
    for k in range(1, cfg.moe.k):
        flops = flops_model(at_expert_budget(cfg, k), spec.input_shape, spec.num_classes, batch=1)
        table[str(k)] = [float(flops.at_steps(s)) for s in steps]
    return table


def at_expert_budget(cfg, k: int):
    """`cfg` routed to `k` experts per token: the experts keep their trained width (by default it
    is sized from k), only routing changes."""
    hidden = cfg.moe.expert_width(cfg.model.hidden)
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, k=k, expert_hidden=hidden))


def accuracy_table(run: Run, split: str = "validation", log=None) -> dict:
    """Accuracy on `split` under every (expert budget, step budget), in batches of the config's
    evaluation size: row k-1 holds step budgets 1..cap at k experts per token (one row, `experts`
    null, without experts). A static model always runs all its steps: its rows hold its accuracy
    at the cap and null below, so nothing reads a smaller step budget as an operating point it
    has. Experts with capacity: `by_batch` holds the same table scored in each of the
    SERVED_BATCHES sizes (on the split's first SERVED_EXAMPLES examples). `log(line)`: progress."""
    cfg, start = run.cfg, time.perf_counter()
    k_max = cfg.moe.k if cfg.moe.enabled else None
    accuracy, examples = _accuracy_rows(run, split, k_max, cfg.train.eval_batch_size)
    table = {
        "split": split,
        "examples": examples,
        "batch": cfg.train.eval_batch_size,
        "experts": list(range(1, k_max + 1)) if k_max else None,
        "accuracy": accuracy,
    }
    sizes = [b for b in SERVED_BATCHES if b < cfg.train.eval_batch_size]  # none below a batch of 1
    if k_max and (cfg.moe.router == "expert_choice" or not cfg.moe.eval_dropless) and sizes:  # the batch shares slots
        scored = []
        for b in sizes:
            scored.append(_accuracy_rows(run, split, k_max, b, SERVED_EXAMPLES))
            if log:
                log(f"accuracy table in batches of {b}: {time.perf_counter() - start:.0f} s so far")
        table["by_batch"] = {"examples": scored[0][1], "batch": sizes, "accuracy": [rows for rows, _ in scored]}
    return table


def _accuracy_rows(run: Run, split: str, k_max: int | None, batch: int, limit: int | None = None):
    """([per expert budget: [accuracy at step budget 1..cap]], examples scored), in batches of
    `batch`, each expert budget run as its served function runs; a static model's rows hold its
    accuracy at its depth only."""
    out = outcomes.collect(run.graphdef, run.params, run.cfg, split, k_max=k_max, batch_size=batch, limit=limit)
    rows = out.correct_KxTxB.mean(-1).round(5).tolist()
    if run.cfg.halting.policy == "none":
        rows = [[None] * (len(row) - 1) + row[-1:] for row in rows]
    return rows, out.size


def export_run(
    workdir: str | Path,
    out: str | Path,
    *,
    step: int | None = None,
    force: bool = False,
    log=None,
    points=None,
) -> Path:
    """The run in `workdir` written to the artifact folder `out`, verified against the live model.
    `force`: replace a previous artifact at `out`. `log(line)`: progress through the slow part
    (scoring the accuracy tables). `points(run) -> (entries, {file: blob})`: operating points
    (adaptive.evaluation.operating_points) written beside the model and listed in meta.json."""
    run = load_run(workdir, step)
    out, staging = staged_paths(out)
    check_targets(out, staging, run.workdir, force)  # before the slow part: a refusal costs nothing
    shape = tuple(run.spec.input_shape)
    (batch,) = jax.export.symbolic_shape("batch")
    specs = (jax.ShapeDtypeStruct((batch, *shape), jnp.float32), jax.ShapeDtypeStruct((batch,), jnp.int32))

    def serialized(experts: int | None) -> bytes:
        fn = jax.jit(serving_function(run.graphdef, run.params, experts))
        return bytes(jax.export.export(fn)(*specs).serialize())

    blob = serialized(None)
    # MoE: one more function per smaller expert budget, each with buffers sized for its k.
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else 1
    variants = {k: serialized(k) for k in range(1, k_max)}
    by_batch = {}
    if nnx.merge(run.graphdef, run.params).compacts_at_inference():
        fn = jax.jit(serving_function(run.graphdef, run.params))
        for b in COMPACTED_BATCHES:
            concrete = (jax.ShapeDtypeStruct((b, *shape), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))
            by_batch[b] = bytes(jax.export.export(fn)(*concrete).serialize())
    meta = _meta(run, blob, variants, by_batch, log)
    point_blobs = {}
    if points is not None:
        meta["operating_points"], point_blobs = points(run)
    ceiling, memory = meta["memory_budget_mb"], meta["memory"]
    if ceiling is not None and memory["total_mb"] > ceiling and not meta.get("operating_points"):
        raise ArtifactError(
            f"the model needs {memory['total_mb']:g} MB at batch {memory['batch']}, over its memory budget of "
            f"{ceiling:g} MB; export it with --precision and --prune to find operating points that fit"
        )
    # Written aside and moved into place once verified: ART is never a half-made artifact.
    blobs = {BLOB: blob, **{variant_file(k): b for k, b in variants.items()}}
    blobs.update({batch_file(b): blob_b for b, blob_b in by_batch.items()}, **point_blobs)
    write_staging(staging, blobs, seal(meta))
    verify(staging, run)
    publish(staging, out, run.workdir, force)
    return out


def _entry(blob: bytes, name: str) -> dict:
    return {"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


def _meta(run: Run, blob: bytes, variants: dict[int, bytes], by_batch: dict[int, bytes], log=None) -> dict:
    """meta.json of an artifact (before sealing): what it is, its caps, compute and accuracy tables."""
    shape = tuple(run.spec.input_shape)
    cost_model = cost_model_of(run, log)
    return {
        "format": FORMAT,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "source": {"workdir": str(run.workdir), "step": run.step},
        "input": {"shape": ["batch", *shape], "dtype": "float32", "budget": "int32[batch], steps per request"},
        "outputs": list(OUTPUTS),
        "num_classes": run.spec.num_classes,
        "caps": {"steps": step_cap(run.cfg), "experts_per_token": run.cfg.moe.k if run.cfg.moe.enabled else None},
        "expert_variants": {str(k): _entry(b, variant_file(k)) for k, b in variants.items()},
        "batch_variants": {str(b): _entry(blob_b, batch_file(b)) for b, blob_b in by_batch.items()},
        "compute_at_steps": compute_table(run),
        "memory": memory_at_serving_batch(run),
        "memory_budget_mb": run.cfg.budget.target if run.cfg.budget.unit == "memory_mb" else None,
        "flops_at_expert_budgets": experts_table(run),
        "accuracy_at_budgets": accuracy_table(run, log=log),
        "budget": config_lib.to_dict(run.cfg)["budget"],
        "cost_model": None if cost_model is None else _cost_model_dict(cost_model),
        "packages": package_versions(),
        "config": config_lib.to_dict(run.cfg),
    }


def _cost_model_dict(model) -> dict:
    from dataclasses import asdict

    return {**asdict(model), "fits": {k: asdict(v) for k, v in model.fits.items()}}


def load_artifact(path: str | Path, experts: int | None = None, batch: int | None = None, point=None):
    """(exported function, meta) after validating meta.json and checking that the blob is the one
    it describes and that it is the meta.json that was exported; `experts` picks a MoE model's
    function for that many experts per token (default: all); `batch`, the function compiled for
    exactly that batch size (an ArtifactError when the artifact has none: see `batch_variants`);
    `point` = (precision, prune), an operating point's function (see `operating_points`)."""
    path = Path(path)
    meta = read_meta(path)
    entry = {"file": BLOB, "sha256": meta["sha256"], "bytes": meta["bytes"]}
    if batch is not None:
        by_batch = meta.get("batch_variants", {})
        if str(batch) not in by_batch:
            raise ArtifactError(
                f"{path} has no function for batches of {batch}; it has {', '.join(by_batch) or 'none'}"
            )
        entry = by_batch[str(batch)]
    entry = point_entry(meta, point, path) or entry
    if experts is not None and experts != meta["caps"]["experts_per_token"]:
        variants = meta.get("expert_variants", {})
        if str(experts) not in variants:
            k_max = meta["caps"]["experts_per_token"]
            have = f"it has {', '.join([*variants, str(k_max)])}" if k_max is not None else "its model has no experts"
            raise ArtifactError(f"{path} has no function for {experts} expert(s) per token; {have}")
        entry = variants[str(experts)]
    name = entry["file"]  # validated: a plain file name of this folder
    try:
        blob = (path / name).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} has no {name}") from None
    check_blob(blob, entry, f"{path}/{name}")
    check_sealed(meta, path)  # a swapped blob whose checksum was updated in meta.json stops here
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # the checksum passed, so this is a version mismatch, not corruption
        raise ArtifactError(f"{path}/{name} does not deserialize with jax {jax.__version__}: {e}") from None
    _check_signature(exported, meta, f"{path}/{name}")
    return exported, meta


def _check_signature(exported, meta: dict, where: str) -> None:
    """The blob takes the input meta.json describes (a format-1 meta.json has no checksum to
    vouch for it): (x[batch, *input.shape], budget[batch]) -> four outputs."""
    shape = tuple(meta["input"]["shape"][1:])
    x, *rest = exported.in_avals
    if tuple(x.shape[1:]) != shape or len(rest) != 1 or len(exported.out_avals) != len(OUTPUTS):
        raise ArtifactError(
            f"{where} takes x of shape {tuple(x.shape)} and {len(rest)} more input(s); "
            f"meta.json's input.shape says {list(meta['input']['shape'])}"
        )


def verify(path: Path, run: Run, count: int = 64) -> None:
    """The artifact answers as the live model: same predictions and steps, same confidence."""
    exported, meta = load_artifact(path)
    batch = next(iter(data.eval_batches(run.cfg.data, run.cfg.data.eval_split, count)))
    x = batch["x"].astype(np.float32)
    cap = meta["caps"]["steps"]
    budget = (np.arange(len(x)) % cap + 1).astype(np.int32)  # every step budget, and the cap
    got = jax.device_get(exported.call(x, budget))
    k_max = run.cfg.moe.k if run.cfg.moe.enabled else None
    live = BudgetedPredictor(run.graphdef, run.params, run.spec.input_shape, cap, k_max=k_max).predict(x, budget)
    probs = np.asarray(jax.nn.softmax(live.logits_BxC, -1))
    same = (got[0] == probs.argmax(-1)).all() and (got[2] == np.asarray(live.steps_B)).all()
    if not same or not np.allclose(got[1], probs.max(-1), rtol=1e-4, atol=1e-5):
        raise ArtifactError(f"{path}: the exported function does not answer as the live model; not exported")
    for b in meta.get("batch_variants", {}):  # each batch's function answers as the symbolic one
        rows = np.resize(np.arange(len(x)), int(b))
        want = jax.device_get(exported.call(x[rows], budget[rows]))
        fixed = jax.device_get(load_artifact(path, batch=int(b))[0].call(x[rows], budget[rows]))
        same = all(np.array_equal(want[i], fixed[i]) for i in (0, 2, 3))  # prediction, steps, experts
        if not same or not np.allclose(want[1], fixed[1], rtol=1e-5, atol=1e-6):
            raise ArtifactError(f"{path}: the function for batches of {b} does not answer as the others; not exported")
