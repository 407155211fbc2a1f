"""`adaptive export` of a language model: budgeted generation as one `jax.export` artifact.

ART/model.jaxexport is the serialized StableHLO of `Decoder.generate` (prefill, then the
KV-cached decode loop) with the parameters baked in, a symbolic batch, and the caps compiled in
(every limit is clipped to its range inside the graph, whatever a client sends). Its inputs,
one row per sequence, in this order (meta.json's `inputs` lists them):

    prompt int32[batch, P] (right-padded), length int32[batch], then GenerationLimits' fields:
    max_new_tokens int32, layer_cap int32, expert_cap int32, flops_budget float32,
    threshold float32, mod_bias float32, temperature float32, top_p float32, seed uint32,
    ignore_eos bool (each [batch])

and its outputs are `Generation`'s fields (tokens int32[batch, M], count, layers, experts,
flops, prefill_flops, stop). meta.json adds the tokenizer (bytes, BOS and EOS), the capacities,
the caps, the exit thresholds (the config's, the one `adaptive calibrate-exits` certified with
its guarantee, and the default a client should send), the worst-case FLOPs per token at each
layer cap, package versions and the config, sealed by its own SHA-256 like a classifier's.
Export checks on the spot that the artifact generates exactly what the live decoder does.
With operating points (`--precision`, `--prune`; adaptive.evaluation.lm_points), each point's
generation is a further file of the same signature (`point-int8-p50.jaxexport`), with slot
functions of its own (`point-int8-p50-slot-step.jaxexport`, ...), listed in meta.json's
`operating_points`.
A plain-JAX client generates text from it without this package (README, tested).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adaptive import config as config_lib
from adaptive.data import byte_vocab
from adaptive.inference import slot_export
from adaptive.inference.artifact_folder import check_targets, publish, staged_paths, write_staging
from adaptive.inference.artifact_meta import (
    BLOB,
    LM_FORMAT,
    META,
    ArtifactError,
    check_blob,
    check_sealed,
    parse_meta,
    point_entry,
    seal,
    validate_lm_files,
)
from adaptive.inference.generate import STOP_REASONS, Decoder, Generation, GenerationLimits, decoder_for_run
from adaptive.inference.restore import load_run
from adaptive.inference.slots import SlotDecoder
from adaptive.workdir import exit_calibration
from adaptive.workdir.runinfo import package_versions

FORMAT = LM_FORMAT
INPUTS = (("prompt", "int32", ["batch", "P"]), ("length", "int32", ["batch"])) + tuple(
    (name.removesuffix("_B"), dtype, ["batch"])
    for name, dtype in zip(
        GenerationLimits._fields,
        ("int32", "int32", "int32", "float32", "float32", "float32", "float32", "float32", "uint32", "bool"),
        strict=True,
    )
)


def export_lm_run(
    workdir: str | Path,
    out: str | Path,
    *,
    prompt_capacity: int,
    new_capacity: int,
    slots: int = 8,
    step=None,
    force=False,
    points=None,
) -> Path:
    """The language model in `workdir` as a generation artifact at `out` (with the slot functions
    of `slots` serving slots), verified. `points(run, threshold, slots)`: meta.json's
    `operating_points`, their files and their live slot functions (adaptive.evaluation.lm_points;
    timed at the artifact's default threshold)."""
    run = load_run(workdir, step, language_model=True)
    out, staging = staged_paths(out)
    check_targets(out, staging, run.workdir, force)
    # read before the tracing, which takes a while: a damaged calibration is refused at once
    calibrated = exit_calibration.for_step(run.workdir, run.step)[0] if run.cfg.lm.exits else None
    try:
        decoder = decoder_for_run(run, prompt_capacity=prompt_capacity, new_capacity=new_capacity)
    except ValueError as e:
        raise ArtifactError(str(e)) from None
    if slots < 1:
        raise ArtifactError(f"--slots={slots} must be >= 1")
    live_slots = SlotDecoder.of(decoder, slots)
    decoder.compact = False  # row buckets need a concrete batch; the artifact's is symbolic
    blob = serialize(decoder)
    slot_blobs, slot_entry = slot_export.serialize(live_slots)
    meta = _meta(run, decoder, blob, calibrated)
    point_blobs, point_slots = {}, {}
    if points is not None:
        meta["operating_points"], point_blobs, point_slots = points(run, meta["exit_threshold"]["default"], slots)
    meta = seal({**meta, "slots": slot_entry})
    write_staging(staging, {BLOB: blob, **slot_blobs, **point_blobs}, meta)
    verify(staging, decoder)
    slot_export.verify(staging, meta, live_slots)
    for point, live in point_slots.items():  # each generation answered as its live decoder before it was kept
        load_lm_artifact(staging, point)
        slot_export.verify(staging, meta, live, point)
    publish(staging, out, run.workdir, force)
    return out


def generation_function(decoder: Decoder):
    """The jitted generation the artifact serializes: INPUTS in order, the parameters baked in."""

    def generate(prompt, length, *limits):
        return tuple(decoder.generate(decoder.params, prompt, length, GenerationLimits(*limits), decoder.worst_DxE))

    return jax.jit(generate)


def input_specs(decoder: Decoder, batch=None) -> list[jax.ShapeDtypeStruct]:
    """INPUTS' shapes at `batch` rows (None: the symbolic batch an artifact is exported with)."""
    if batch is None:
        (batch,) = jax.export.symbolic_shape("batch")
    shapes = {"P": decoder.prompt_capacity}
    return [
        jax.ShapeDtypeStruct(tuple(batch if d == "batch" else shapes[d] for d in dims), jnp.dtype(dtype))
        for _, dtype, dims in INPUTS
    ]


def serialize(decoder: Decoder) -> bytes:
    """The decoder's generation as a serialized `jax.export` function of a symbolic batch."""
    return bytes(jax.export.export(generation_function(decoder))(*input_specs(decoder)).serialize())


def _meta(run, decoder: Decoder, blob: bytes, calibrated: dict | None) -> dict:
    configured = run.cfg.lm.exit_threshold if run.cfg.lm.exits else None
    default = calibrated["threshold"] if calibrated else (configured if configured is not None else 2.0)
    return {
        "format": FORMAT,
        "file": BLOB,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "source": {"workdir": str(run.workdir), "step": run.step},
        "tokenizer": {"kind": "bytes", "bos": byte_vocab.BOS, "eos": byte_vocab.EOS, "vocab": decoder.vocab},
        "prompt_capacity": decoder.prompt_capacity,
        "new_capacity": decoder.new_capacity,
        "caps": {"layers": decoder.blocks, "experts_per_token": decoder.max_experts},
        "inputs": [list(entry) for entry in INPUTS],
        "outputs": list(Generation._fields),
        "stop_reasons": list(STOP_REASONS),
        "exit_threshold": {"configured": configured, "calibrated": calibrated, "default": default},
        "worst_flops_per_token_at_layer_cap": [float(x) for x in np.asarray(decoder.worst_DxE)[:, -1]],
        "packages": package_versions(),
        "config": config_lib.to_dict(run.cfg),
    }


def load_lm_artifact(path: str | Path, point=None):
    """(the deserialized generation function, meta.json), checked: format, operating points,
    blob checksum, seal. `point` = (precision, prune): that operating point's generation
    (adaptive.evaluation.lm_points; default, and (fp32, 0): model.jaxexport)."""
    path = Path(path)
    meta = parse_meta(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactError(f"{path}/{META}: format must be {FORMAT!r} (a language model's artifact); got {got!r}")
    validate_lm_files(meta, f"{path}/{META}")
    check_sealed(meta, path)
    entry = point_entry(meta, point, path) or {"file": BLOB, "sha256": meta["sha256"], "bytes": meta.get("bytes")}
    name = entry["file"]  # validated: a plain file name of this folder
    try:
        blob = (path / name).read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}/{name} cannot be read ({e.strerror})") from None
    check_blob(blob, entry, f"{path}/{name}")
    try:
        exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 - the deserializer raises many kinds; one line says which
        raise ArtifactError(f"{path}/{name} cannot be deserialized ({e.__class__.__name__})") from None
    if len(exported.in_avals) != len(INPUTS) or len(exported.out_avals) != len(Generation._fields):
        raise ArtifactError(f"{path}/{name} does not have the generation signature of {FORMAT}")
    return exported, meta


def verify(path: Path, decoder: Decoder, point=None) -> None:
    """The artifact's greedy and sampled generations (at operating point `point`, default the
    model) equal the live decoder's."""
    exported, _ = load_lm_artifact(path, point)
    check_generation(exported, decoder, f"{path} at point {point}" if point else str(path))


def check_generation(exported, decoder: Decoder, where: str) -> None:
    """An exported generation answers as the live `decoder`: same tokens, depths and experts,
    FLOPs within float tolerance, greedy and sampled, two thresholds."""
    prompts = [byte_vocab.encode(text, eos=False)[: decoder.prompt_capacity] for text in (b"def f(x):", b"import")]
    limits = decoder.limits(2, temperature=[0.0, 1.0], seed=[0, 1], threshold=[0.5, 2.0])
    live = decoder(prompts, limits)
    padded = np.zeros((2, decoder.prompt_capacity), np.int32)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    got = exported.call(padded, lengths, *limits)
    for name, a, b in zip(Generation._fields, got, live, strict=True):
        if not np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-3):
            raise ArtifactError(f"{where}: the exported generation's {name} differs from the live decoder's")
