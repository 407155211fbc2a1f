"""A language model's slot functions in its artifact, for `adaptive serve`'s continuous batching.

`adaptive export` of a language model writes, beside the whole generation, the two functions of
`SlotDecoder` (adaptive.inference.slots) for S slots (`--slots`), parameters baked in:

    slot-prefill.jaxexport: (*state, slot int32[], prompt int32[P], length int32[], *limits [1])
                            -> (*state, token, stop, layers, experts, prefill_flops)
    slot-step.jaxexport:    (*state, threshold float32[S], expert_cap int32[S])
                            -> (*state, token, valid, layers, experts, flops, stop)  [S each]

An operating point of the artifact (adaptive.evaluation.lm_points) has its own pair, named
`point-<precision>-p<percent>-slot-prefill.jaxexport` and so on, described in its entry's `slots`.

`state` is the flat list of `SlotState`'s arrays (meta.json's `slots.state` gives their shapes
and dtypes; all zeros is S empty slots). The slot count is concrete, not symbolic: a step runs
each block on only the slots that need it, in row buckets a symbolic count cannot size.
`ExportedSlots` loads them back with the interface `LMEngine` drives, the state's buffers
donated from step to step as the live decoder's are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adaptive.data import byte_vocab
from adaptive.inference.artifact_meta import ArtifactError, check_blob, point_entry
from adaptive.inference.slots import Joined, SlotDecoder, step_inputs
from adaptive.inference.token_step import GenerationLimits, Made, checked_limits

FILES = {"prefill": "slot-prefill.jaxexport", "step": "slot-step.jaxexport"}


def serialize(slots: SlotDecoder, prefix: str = "") -> tuple[dict[str, bytes], dict]:
    """({file name: serialized function}, meta.json's `slots` entry); `prefix` starts the file
    names (an operating point's: `point-int8-p0-`)."""
    files = {name: prefix + file for name, file in FILES.items()}
    state = jax.eval_shape(slots.empty)
    leaves, tree = jax.tree.flatten(state)
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    prompt = jax.ShapeDtypeStruct((slots.prompt_capacity,), jnp.int32)
    one_row = [jax.ShapeDtypeStruct((1,), a.dtype) for a in jax.eval_shape(lambda: slots.limits(1))]
    n = len(leaves)
    per_slot = [jax.ShapeDtypeStruct((slots.slots,), dtype) for dtype in (jnp.float32, jnp.int32)]

    def prefill(*args):
        state, (slot, prompt_P, length), limits = tree.unflatten(args[:n]), args[n : n + 3], args[n + 3 :]
        new, joined = slots.prefill_fn(
            slots.params, state, slot, prompt_P, length, GenerationLimits(*limits), slots.worst_DxE
        )
        return (*jax.tree.leaves(new), *joined)

    def step(*args):
        state, (threshold_S, expert_cap_S) = tree.unflatten(args[:n]), args[n:]
        new, made = slots.step_fn(slots.params, state, threshold_S, expert_cap_S, slots.worst_DxE)
        return (*jax.tree.leaves(new), *made)

    blobs = {
        files["prefill"]: bytes(
            jax.export.export(jax.jit(prefill))(*specs, scalar, prompt, scalar, *one_row).serialize()
        ),
        files["step"]: bytes(jax.export.export(jax.jit(step))(*specs, *per_slot).serialize()),
    }
    entry = {
        "count": slots.slots,
        "state": [[list(a.shape), str(a.dtype)] for a in leaves],
        **{
            name: {"file": file, "sha256": hashlib.sha256(blobs[file]).hexdigest(), "bytes": len(blobs[file])}
            for name, file in files.items()
        },
    }
    return blobs, entry


class ExportedSlots:
    """An artifact's slot functions with `SlotDecoder`'s host interface (state as a flat list);
    `point` = (precision, prune): that operating point's (default, and (fp32, 0): the model's)."""

    def __init__(self, path: str | Path, meta: dict, point=None):
        path = Path(path)
        entry = (point_entry(meta, point, path) or meta).get("slots")
        if not isinstance(entry, dict):
            raise ArtifactError(f"{path} has no slot functions for serving; export it again with `adaptive export`")
        fns = {}
        for name in FILES:
            file = path / entry[name]["file"]
            try:
                blob = file.read_bytes()
            except OSError as e:
                raise ArtifactError(f"{file} cannot be read ({e.strerror})") from None
            check_blob(blob, entry[name], str(file))
            try:
                fns[name] = jax.export.deserialize(bytearray(blob))
            except Exception as e:  # noqa: BLE001 - the deserializer raises many kinds; one line says which
                raise ArtifactError(f"{file} cannot be deserialized ({e.__class__.__name__})") from None
        try:
            self.state_avals = [(tuple(shape), np.dtype(dtype)) for shape, dtype in entry["state"]]
        except TypeError:
            raise ArtifactError(f"{path}/meta.json's slot state names a dtype this JAX does not know") from None
        n = len(self.state_avals)
        if len(fns["step"].in_avals) != n + 2 or len(fns["prefill"].in_avals) != n + 3 + len(GenerationLimits._fields):
            raise ArtifactError(f"{path}'s slot functions do not match meta.json's slot state")
        if [(tuple(a.shape), a.dtype) for a in fns["step"].in_avals[:n]] != self.state_avals:
            raise ArtifactError(f"{path}'s slot functions take another slot state than meta.json's slots.state")
        self.slots, self.prompt_capacity = int(entry["count"]), int(meta["prompt_capacity"])
        self.new_capacity = int(meta["new_capacity"])
        self.blocks, self.max_experts = int(meta["caps"]["layers"]), int(meta["caps"]["experts_per_token"])
        self.traces = {"prefill": 0, "step": 0}
        self._prefill = jax.jit(self._counted("prefill", fns["prefill"].call), donate_argnums=tuple(range(n)))
        self._step = jax.jit(self._counted("step", fns["step"].call), donate_argnums=tuple(range(n)))
        self._n = n
        self._leave = jax.jit(lambda active_S, slot: active_S.at[slot].set(False))

    def _counted(self, name, call):
        def traced(*args):
            self.traces[name] += 1
            return call(*args)

        return traced

    def limits(self, batch: int, **given) -> GenerationLimits:
        return checked_limits(batch, self.new_capacity, self.blocks, self.max_experts, **given)

    def empty(self) -> list:
        # committed to the device, as the functions' outputs are: jit keys its cache on that, and an
        # uncommitted empty state would compile each function a second time at its second call
        device = jax.devices()[0]
        return [jax.device_put(jnp.zeros(shape, dtype), device) for shape, dtype in self.state_avals]

    def prefill(self, state, slot, prompt_P, length, limits: GenerationLimits):
        out = self._prefill(*state, slot, prompt_P, length, *limits)
        return list(out[: self._n]), Joined(*out[self._n :])

    def leave(self, state, slot) -> list:
        """`active_S`, `SlotState`'s last field, is the flat state's last array."""
        return [*state[:-1], self._leave(state[-1], slot)]

    def step(self, state, threshold_S=None, expert_cap_S=None):
        out = self._step(*state, *step_inputs(self.slots, self.max_experts, threshold_S, expert_cap_S))
        return list(out[: self._n]), Made(*out[self._n :])


def verify(path: Path, meta: dict, live: SlotDecoder, point=None) -> None:
    """The artifact's slot functions (at operating point `point`, default the model's) generate
    what the live ones do: two requests joining one after the other, one greedy with early exits,
    one sampled, until both end."""
    exported = ExportedSlots(path, meta, point)
    prompt = byte_vocab.encode(b"def f(x):", eos=False)[: live.prompt_capacity]
    padded = np.zeros((live.prompt_capacity,), np.int32)
    padded[: len(prompt)] = prompt
    requests = [dict(threshold=0.5), dict(temperature=1.0, seed=1)]
    runs = []
    for fns in (live, exported):
        state, tokens = fns.empty(), []
        for slot, request in enumerate(requests[: fns.slots]):
            state, joined = fns.prefill(state, np.int32(slot), padded, np.int32(len(prompt)), fns.limits(1, **request))
            tokens.append(int(joined.token))
            for _ in range(live.new_capacity):
                state, made = fns.step(state)
                tokens.extend(np.where(np.asarray(made.valid_B), np.asarray(made.token_B), -1).tolist())
        runs.append(tokens)
    if runs[0] != runs[1]:
        where = f" of point {point[0]} prune {point[1]:g}" if point else ""
        raise ArtifactError(f"the exported slot functions{where} generate other tokens than the live decoder's")
