"""`adaptive bench lm --json OUT`: the language model's per-token savings in wall-clock time.

Rows `{variant, batch, tokens, ms, ratio, flops_fraction}` (`flops_fraction`: the variant's
FLOPs as a share of the full model's), every group timed side by side in one run (interleaved
calls, medians after warm-up):

- **Mixture-of-Depths training**: whole train steps (forward, backward, AdamW update; the
  framework's own step) of the model without MoD (`train step, L blocks: full`, ratio 1), of the
  same model with MoD at `capacity` on every other block (`...: MoD c on every other block`,
  ratio to full), and of a dense model of the MoD model's training FLOPs: fewer blocks of the
  same width, timed at the two depths around the equal-FLOPs depth and interpolated (`...: dense
  of equal FLOPs (n blocks)`, ratio to full).
- **Early exit**: the forward pass where every token leaves at exit d (the learned exit units set
  so that exit d's score is 1 and the others' 0, as `bench depth` sets halting units), `forward:
  exits, every token at exit d`, against the static model of d blocks (`forward: static d
  blocks`, ratio 1).

The table opens with a line saying what each ratio divides by; a deeper static model timed
clearly faster than a shallower one is noise, said in a warning.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from adaptive.bench.results import warn_deeper_faster, write_json
from adaptive.compute.timing import time_side_by_side
from adaptive.config import HaltingConfig
from adaptive.data.byte_vocab import VOCAB_SIZE
from adaptive.evaluation.tables import print_table
from adaptive.nn.lm import LanguageModel
from adaptive.training import lm_steps, steps

COLUMNS = ["variant", "batch", "tokens", "ms", "ratio", "flops_fraction"]
BASELINES = (
    "ms: medians of interleaved calls; ratio = ms / the 'full' train step's ms (train rows), = the exit "
    "row's ms / the 'static d blocks' row's ms at the same d (forward rows; static rows: 1); "
    "flops_fraction = FLOPs / the full model's"
)


def _lm(width: int, layers: int, heads: int, length: int, **kw) -> LanguageModel:
    return LanguageModel(
        vocab=VOCAB_SIZE, width=width, layers=layers, heads=heads, max_length=length, rngs=nnx.Rngs(0), **kw
    )


def _train_step(model: LanguageModel, batch: dict):
    """The framework's train step for `model`, and a zero-argument call that advances it."""
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx = optax.adamw(1e-3)
    loss_fn = lm_steps.make_loss_fn(graphdef, classifier=False)
    rows = batch["x"].shape[0]
    state = steps.init_state(
        graphdef, params, tx, HaltingConfig(policy="none"), batch["x"].shape[1:], None, rows, loss_fn
    )
    step = jax.jit(
        steps.make_train_step(graphdef, tx, HaltingConfig(policy="none"), None, 0, loss_fn), donate_argnums=0
    )
    holder = {"state": state}

    def call():
        holder["state"] = step(holder["state"], batch)
        return holder["state"]["step"]

    return call


def mod_flops_fraction(layers: int, mod_every: int, capacity: float, length: int) -> float:
    """The MoD model's block FLOPs over the full model's, a MoD block counted at its picked
    share of the tokens (exact for the matmuls; its attention, quadratic in the tokens, shrinks
    more, so this is an upper bound)."""
    picked = max(1, math.ceil(capacity * length)) / length
    mod_blocks = len([i for i in range(layers) if i % mod_every == mod_every - 1])
    return (layers - mod_blocks + mod_blocks * picked) / layers


def run(
    *,
    width: int,
    layers: int,
    heads: int,
    length: int,
    batch: int,
    capacity: float,
    exit_depths: list[int],
    repeats: int,
    json_out: str | None,
) -> list[dict]:
    for d in exit_depths:  # before any timing: a refusal costs nothing
        if not 1 <= d < layers:
            raise ValueError(f"exit depth {d} must be in 1..{layers - 1} (exits follow blocks 1..{layers - 1})")
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 256, (batch, length + 1)), jnp.int32)
    data = {"x": tokens[:, :-1], "y": tokens[:, 1:]}
    count = batch * length
    rows = []

    # Mixture-of-Depths training against the full model and a dense model of equal FLOPs
    fraction = mod_flops_fraction(layers, 2, capacity, length)
    lo, hi = max(1, math.floor(layers * fraction)), max(1, math.ceil(layers * fraction))
    calls = {
        "full": _train_step(_lm(width, layers, heads, length), data),
        "mod": _train_step(_lm(width, layers, heads, length, mod_capacity=capacity, mod_every=2), data),
        "dense_lo": _train_step(_lm(width, lo, heads, length), data),
        "dense_hi": _train_step(_lm(width, hi, heads, length), data),
    }
    ms = time_side_by_side(calls, repeats=repeats)
    dense = ms["dense_lo"] + (layers * fraction - lo) * (ms["dense_hi"] - ms["dense_lo"])
    train = f"train step, {layers} blocks"
    for variant, value, flops in (
        (f"{train}: full", ms["full"], 1.0),
        (f"{train}: MoD {capacity:.3g} on every other block", ms["mod"], fraction),
        (f"{train}: dense of equal FLOPs ({layers * fraction:.2f} blocks)", dense, fraction),
    ):
        rows.append(_row(variant, batch, count, value, value / ms["full"], flops))

    # early exit at d against the static model of d blocks
    exits = _lm(width, layers, heads, length, exits=True, confidence="classifier")
    for d in exit_depths:
        graphdef, params = nnx.split(exits, nnx.Param)
        params = _exit_at(nnx.to_pure_dict(params), d)
        forward = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x, train=False, exit_threshold=0.5).logits_BxLxV)
        out = nnx.merge(graphdef, params)(data["x"], train=False, exit_threshold=0.5)
        assert (np.asarray(out.layers_BxL) == d).all(), f"calibration failed: layers {np.unique(out.layers_BxL)} != {d}"
        static = _lm(width, d, heads, length)
        s_graph, s_params = nnx.split(static, nnx.Param)
        static_fn = jax.jit(lambda p, x, g=s_graph: nnx.merge(g, p)(x, train=False).logits_BxLxV)
        ms = time_side_by_side(
            {
                "exit": lambda p=params, f=forward: f(p, data["x"]),
                "static": lambda p=s_params, f=static_fn: f(p, data["x"]),
            },
            repeats=repeats,
        )
        rows.append(_row(f"forward: static {d} blocks", batch, count, ms["static"], 1.0, d / layers))
        rows.append(
            _row(
                f"forward: exits, every token at exit {d}",
                batch,
                count,
                ms["exit"],
                ms["exit"] / ms["static"],
                d / layers,
            )
        )
    warn_deeper_faster(
        [(d, r["ms"]) for d, r in zip(exit_depths, rows[3::2], strict=True)],
        lambda d1, ms1, d2, ms2: f"static {d2} blocks timed faster than static {d1} ({ms2:.3g} < {ms1:.3g} ms)",
    )
    print(BASELINES)
    print_table(rows, COLUMNS)
    write_json(json_out, rows)
    return rows


def _exit_at(params: dict, d: int) -> dict:
    """Exit units whose score is 1 at exit d (after block d) and 0 before it."""
    units = params["exit_units"]
    out = {}
    for i, unit in units.items():
        bias = 30.0 if int(i) == d - 1 else -30.0
        out[i] = {"kernel": jnp.zeros_like(unit["kernel"]), "bias": jnp.full_like(unit["bias"], bias)}
    return {**params, "exit_units": out}


def _row(variant: str, batch: int, tokens: int, ms: float, ratio: float, flops: float) -> dict:
    return {"variant": variant, "batch": batch, "tokens": tokens, "ms": ms, "ratio": ratio, "flops_fraction": flops}
