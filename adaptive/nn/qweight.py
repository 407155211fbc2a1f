"""A weight stored at reduced precision (bfloat16, or int8 / int4 with a float32 scale per
channel) and the products against it: int8 x int8 with int32 accumulation, rescaled to float32.

`adaptive.nn.quantize` rewrites a model's layers to hold these; the experts of a MoE layer use
`operand` and `product` directly, so each of their dispatch paths (an einsum over capacity
buffers, a matmul per block, `ragged_dot`) multiplies integers too instead of dequantizing every
expert's weights to float32 first, which XLA:CPU materializes as a temporary the size of the
float32 experts.

int4 is packed two values per byte by hand: `jnp.int4` arrays occupy a byte per value on
XLA:CPU and in a serialized `jax.export` artifact, as large as int8. Values are symmetric,
-(2^(b-1)-1)..2^(b-1)-1, with the scale `clip * max|w| / levels`; `clip` < 1 saturates the
outliers to resolve the rest finer, and is chosen on validation data
(adaptive.evaluation.quantization).

The integer constants are passed through `optimization_barrier`: without it XLA constant-folds
convert(int8 constant) * scale back into a float32 constant when it compiles an artifact whose
weights are baked in, and the saving silently disappears (the peak memory is fp32's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

PRECISIONS = ("fp32", "bf16", "int8", "int4")
LEVELS = {"int8": 127, "int4": 7}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


class QWeight(nnx.Module):
    """A weight stored at `precision` with a float32 scale per channel of the axes other than
    `axis` (the reduced one: a kernel's input axis, an embedding's width; a leading axis of
    stacked layers gets a scale per layer). `[...]` gives it back as float32; `integers()` gives
    the int8 values for an integer matmul."""

    def __init__(self, w: jax.Array, precision: str, clip: float = 1.0, axis: int = -2):
        check_precision(precision)
        if precision == "fp32":
            raise ValueError("QWeight holds a reduced precision; keep a float32 weight as it is")
        if not 0 < clip <= 1:
            raise ValueError(f"clip must be in (0, 1]; got {clip}")
        # The axis counted from the end: modules stacked on a leading axis (adaptive.nn.backbones)
        # are sliced to one layer's weight before its product, and the axis must still name it.
        self.precision, self.shape, self.axis = precision, tuple(w.shape), axis % w.ndim - w.ndim
        self.dtype = jnp.float32
        if precision == "bf16":
            self.values, self.scale = nnx.Param(w.astype(jnp.bfloat16)), None
            return
        q, scale = quantized(w, precision, clip, (self.axis,))
        self.values = nnx.Param(_pack(q, self.axis) if precision == "int4" else q)
        self.scale = nnx.Param(scale)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def integers(self) -> jax.Array:
        """The int8 values (int4 unpacked), kept integer through XLA's constant folding."""
        values = jax.lax.optimization_barrier(self.values[...])
        if self.precision == "int4":
            return _unpack(values, self.axis, self.shape[self.axis])
        return values

    def __getitem__(self, index):
        if self.precision == "bf16":
            return jax.lax.optimization_barrier(self.values[...]).astype(jnp.float32)[index]
        return (self.integers().astype(jnp.float32) * self.scale[...])[index]


def quantized(w: jax.Array, precision: str, clip: float, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(int8 values, float32 scale) of `w`, one scale per channel of the axes other than `axes`."""
    levels = LEVELS[precision]
    amax = jnp.max(jnp.abs(w), axis=axes, keepdims=True) * clip
    scale = jnp.where(amax > 0, amax / levels, 1.0).astype(jnp.float32)
    return jnp.clip(jnp.round(w / scale), -levels, levels).astype(jnp.int8), scale


def _pack(q: jax.Array, axis: int) -> jax.Array:
    """int4 values (int8 in -7..7) packed two per uint8 along `axis` (padded to even)."""
    q = jnp.moveaxis(q, axis, 0)
    if q.shape[0] % 2:
        q = jnp.concatenate([q, jnp.zeros_like(q[:1])])
    nibbles = q.astype(jnp.uint8) & 0xF
    return jnp.moveaxis(nibbles[0::2] | (nibbles[1::2] << 4), 0, axis)


def _unpack(packed: jax.Array, axis: int, length: int) -> jax.Array:
    """The int8 values `_pack` packed: each nibble sign-extended by an arithmetic shift."""
    as_int = jax.lax.bitcast_convert_type(jnp.moveaxis(packed, axis, 0), jnp.int8)
    low, high = (as_int << 4) >> 4, as_int >> 4
    both = jnp.stack([low, high], axis=1).reshape(-1, *as_int.shape[1:])[:length]
    return jnp.moveaxis(both, 0, axis)


def rows_int8(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x quantized to int8 per row (its last axis), with each row's float32 scale."""
    amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True).astype(jnp.float32)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def integer_matmul(x: jax.Array, weight: QWeight, contract: int, columns: slice | None = None) -> jax.Array:
    """x[..., K] against `weight` contracted over its axis `contract` (a 2-D weight; `columns`:
    only those of its other axis), as int8 x int8 -> int32, rescaled to float32 (bf16 weights:
    a bfloat16 matmul accumulated in float32)."""
    keep = (slice(None), columns or slice(None)) if contract == 0 else (columns or slice(None), slice(None))
    if weight.precision == "bf16":
        values = jax.lax.optimization_barrier(weight.values[...])[keep]
        return _matmul(x.astype(jnp.bfloat16), values, contract, jnp.float32)
    x_q, x_scale = rows_int8(x)
    acc = _matmul(x_q, weight.integers()[keep], contract, jnp.int32)
    w_scale = jnp.squeeze(weight.scale[...][keep], contract)
    return acc.astype(jnp.float32) * x_scale * w_scale


def _matmul(x: jax.Array, w: jax.Array, contract: int, out_dtype) -> jax.Array:
    """x[..., K] . w contracted over w's axis `contract`. A single row is padded to two: XLA:CPU
    lowers a one-row integer (or bf16) matmul by converting the whole weight to float32 first,
    which costs the memory the quantization saved and more time than two rows."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    single = rows.shape[0] == 1
    if single:
        rows = jnp.concatenate([rows, jnp.zeros_like(rows)])
    out = jax.lax.dot_general(rows, w, (((1,), (contract,)), ((), ())), preferred_element_type=out_dtype)
    return (out[:1] if single else out).reshape(*lead, -1)


class Operand(NamedTuple):
    """A weight ready for products: `values` in the dtype the product runs in (float32, bfloat16
    or int8) and, for integers, the float32 `scale` its int32 accumulator is multiplied by."""

    values: jax.Array
    scale: jax.Array | None


def operand(weight) -> Operand:
    """The operand of a float weight (an array or nnx.Param) or of a `QWeight`, read once (int4
    unpacked once) so that a loop over blocks or experts does not read it again per step."""
    if not isinstance(weight, QWeight):
        return Operand(weight[...], None)
    if weight.precision == "bf16":
        return Operand(jax.lax.optimization_barrier(weight.values[...]), None)
    return Operand(weight.integers(), weight.scale[...])


def product(x: jax.Array, w: Operand, dot: Callable, scale_of: Callable = lambda s: s) -> jax.Array:
    """`dot(x, w.values, accumulator dtype)` in the precision `w` holds: float32 as is, bfloat16
    inputs accumulated in float32, or x quantized to int8 per row (its last axis) against the
    int8 weight, the int32 result rescaled by x's row scales and `scale_of(w.scale)`, the weight's
    per-channel scales laid out as `dot`'s output (an expert's, a block's, a row's expert's).
    x's second-to-last axis holds the rows (`dot`'s output keeps it there)."""
    if w.scale is None and w.values.dtype != jnp.bfloat16:
        return dot(x, w.values, None)
    single = x.shape[-2] == 1  # one row: padded to two, as `_matmul` does, for XLA:CPU's sake
    if single:
        x = jnp.concatenate([x, jnp.zeros_like(x)], axis=-2)
    if w.scale is None:
        y = dot(x.astype(jnp.bfloat16), w.values, jnp.float32)
    else:
        x_q, x_scale = rows_int8(x)
        y = dot(x_q, w.values, jnp.int32).astype(jnp.float32) * x_scale * scale_of(w.scale)
    return y[..., :1, :] if single else y
