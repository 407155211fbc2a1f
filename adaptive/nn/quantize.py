"""Weight quantization of any trained model: int8 or int4 per output channel, or bfloat16.

`quantize_model(graphdef, params, precision)` rewrites a model's modules in place of a copy:

- every `nnx.Linear` (and `nnx.LinearGeneral`, attention's projections) becomes a `QLinear`
  whose matmul runs int8 x int8 with int32 accumulation (inputs quantized per row on the fly,
  weights per output channel): on XLA:CPU a dequantized weight is materialized as a float32
  temporary for every layer at once, as large as the float32 model, so only an integer matmul
  keeps the memory saving in the compiled program; int4 weights are unpacked to int8 first;
- `nnx.Embed` tables become int8/int4 rows with a scale per row (lookups dequantize the rows
  they read; `attend` is an integer matmul);
- the experts of a MoE layer keep their three dispatch paths, each multiplying integers
  (`adaptive.nn.qweight.product`): their storage shrinks and no float32 copy is made;
- decisions stay float32: routers, halting and exit units, Mixture-of-Depths routers. They are a
  tiny share of the weights, and a flipped decision changes the compute, not only the answer.

Why not AQT (aqtp, which imports under this jax): it quantizes by injecting a dot_general into
each layer, which reaches nnx.Linear but not the experts' einsums, ragged_dot or the decoder's
column projections; a module rewrite covers every model kind here without editing them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from adaptive.nn.moe import MoEFeedForward
from adaptive.nn.qweight import QWeight, check_precision, integer_matmul, quantized

# Attribute names of the layers that decide compute (kept float32): see the module docstring.
DECISIONS = ("router", "halt_unit", "exit_units", "weight", "predictor_hidden", "predictor_out")


class QLinear(nnx.Module):
    """An nnx.Linear at reduced precision: y = x @ W + b with an integer (or bf16) matmul. `kernel`
    keeps nnx.Linear's name, so code reading `layer.kernel[...]` or its shape still works."""

    def __init__(self, linear: nnx.Linear, precision: str, clip: float = 1.0):
        self.kernel = QWeight(linear.kernel[...], precision, clip, axis=-2)  # in x out (layers x in x out)
        self.bias = linear.bias
        self.dtype = linear.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.columns(x, slice(None))

    def columns(self, x: jax.Array, columns: slice) -> jax.Array:
        """Some output columns, with the numbers the full matmul gives them (a decoder projects
        only the queries of tokens whose keys and values its cache holds)."""
        y = integer_matmul(x, self.kernel, 0, columns)
        if self.bias is not None:
            y = y + self.bias[...][columns]
        return y.astype(self.dtype or jnp.result_type(x, jnp.float32))


class QLinearGeneral(nnx.Module):
    """An nnx.LinearGeneral over trailing axes (attention's query, key, value and output
    projections) at reduced precision: the kernel flattened to in x out, one integer matmul."""

    def __init__(self, linear: nnx.LinearGeneral, precision: str, clip: float = 1.0):
        self.in_axes, self.out_features = len(linear.in_features), tuple(linear.out_features)
        if not _trailing(linear):
            raise ValueError("only a LinearGeneral over trailing axes, without batch axes, is quantized")
        kernel = linear.kernel[...]
        stacked = kernel.shape[: kernel.ndim - self.in_axes - len(self.out_features)]  # layers stacked
        flat = kernel.reshape(*stacked, math.prod(linear.in_features), math.prod(self.out_features))
        self.kernel = QWeight(flat, precision, clip, axis=-2)
        self.bias = linear.bias
        self.dtype = linear.dtype

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        del out_sharding  # nnx attention passes it; one device here
        lead = x.shape[: x.ndim - self.in_axes]
        y = integer_matmul(x.reshape(*lead, -1), self.kernel, 0)
        if self.bias is not None:
            y = y + self.bias[...].reshape(-1)
        return y.reshape(*lead, *self.out_features).astype(self.dtype or jnp.result_type(x, jnp.float32))


class QEmbed(nnx.Module):
    """An nnx.Embed at reduced precision, a scale per row: lookups read and dequantize only their
    rows; `attend` (a tied output layer) is an integer matmul."""

    def __init__(self, embed: nnx.Embed, precision: str, clip: float = 1.0):
        self.embedding = QWeight(embed.embedding[...], precision, clip, axis=-1)
        self.num_embeddings, self.features = embed.num_embeddings, embed.features
        self.dtype = embed.dtype or jnp.float32

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding
        if table.precision == "bf16":
            return jnp.take(table.values[...], ids, axis=0).astype(self.dtype)
        rows = jnp.take(table.integers(), ids, axis=0).astype(jnp.float32)
        return (rows * jnp.take(table.scale[...], ids, axis=0)).astype(self.dtype)

    def attend(self, query: jax.Array) -> jax.Array:
        return integer_matmul(query, self.embedding, 1).astype(self.dtype)


def quantize_model(graphdef: nnx.GraphDef, params, precision: str, clip: float = 1.0):
    """(graphdef, params) of the model rewritten at `precision` (fp32: unchanged)."""
    if check_precision(precision) == "fp32":
        return graphdef, params
    model = nnx.merge(graphdef, params)
    for parent, name, child in list(_targets(model)):
        if isinstance(child, MoEFeedForward):
            child.w_in = QWeight(child.w_in[...], precision, clip, axis=-2)
            child.w_out = QWeight(child.w_out[...], precision, clip, axis=-2)
            continue
        kind = QLinear if isinstance(child, nnx.Linear) else QEmbed if isinstance(child, nnx.Embed) else QLinearGeneral
        if isinstance(parent, nnx.List):
            parent[name] = kind(child, precision, clip)
        else:
            setattr(parent, name, kind(child, precision, clip))
    return nnx.split(model, nnx.Param)


def fake_quantizer(graphdef: nnx.GraphDef, precision: str, clip: float = 1.0):
    """`params -> params` for quantization-aware training: each weight `quantize_model` would
    quantize takes its quantized value in the forward pass and passes gradients straight through
    (w + stop_gradient(q(w) - w)). Inputs are not fake-quantized: their per-row int8 error is
    small next to the weights' at 4 bits."""
    check_precision(precision)

    def round_trip(w: jax.Array, axes: tuple[int, ...]) -> jax.Array:
        if precision == "bf16":
            q = w.astype(jnp.bfloat16).astype(w.dtype)
        else:
            values, scale = quantized(w, precision, clip, axes)
            q = values.astype(w.dtype) * scale
        return w + jax.lax.stop_gradient(q - w)

    def transform(params):
        if precision == "fp32":
            return params
        if isinstance(params, nnx.State):  # merge would share its variables: written below
            params = nnx.to_pure_dict(params)
        model = nnx.merge(graphdef, params)
        for _, _, child in list(_targets(model)):
            if isinstance(child, MoEFeedForward):
                child.w_in[...] = round_trip(child.w_in[...], (child.w_in.ndim - 2,))
                child.w_out[...] = round_trip(child.w_out[...], (child.w_out.ndim - 2,))
            elif isinstance(child, nnx.Embed):
                child.embedding[...] = round_trip(child.embedding[...], (-1,))
            else:  # Linear: its input axis; LinearGeneral: its input axes (after any of stacked layers)
                general = isinstance(child, nnx.LinearGeneral)
                inputs, outputs = (len(child.in_features), len(child.out_features)) if general else (1, 1)
                child.kernel[...] = round_trip(child.kernel[...], tuple(range(-inputs - outputs, -outputs)))
        return nnx.state(model, nnx.Param)

    return transform


def _targets(node):
    """(parent, name, module) below `node` for each Linear, LinearGeneral over trailing axes and
    Embed a quantized model rewrites, and (node, None, node) for each MoE layer (its experts);
    the decision layers (DECISIONS) are left out."""
    if isinstance(node, MoEFeedForward):
        yield node, None, node
    if isinstance(node, nnx.List):
        children = list(enumerate(node))
    elif isinstance(node, nnx.Module):
        children = [(k, v) for k, v in vars(node).items() if not k.startswith("_")]
    else:
        return
    for name, child in children:
        if name in DECISIONS or isinstance(child, (QWeight, QLinear, QLinearGeneral, QEmbed)):
            continue
        if isinstance(child, (nnx.Linear, nnx.Embed)) or _trailing(child):
            yield node, name, child
        else:
            yield from _targets(child)


def _trailing(module) -> bool:
    """A LinearGeneral over its input's trailing axes without batch axes (attention's)."""
    if not isinstance(module, nnx.LinearGeneral):
        return False
    return not module.batch_axis and tuple(module.axis) == tuple(range(-len(module.in_features), 0))


def weight_bytes(params) -> int:
    """Bytes the parameters occupy as stored (int4: packed, half a byte per value)."""
    return int(sum(leaf.nbytes for leaf in jax.tree.leaves(params)))
