"""Structured pruning: whole feed-forward hidden units and whole experts, cut out of the shapes.

A mask would leave XLA computing every zero (DESIGN.md: masking saves nothing), so pruning
slices the weights and the model runs smaller matmuls:

- feed-forward hidden units (each block's `up` -> `down` pair: the MLP, transformer and language
  model blocks) are ranked by magnitude, ||up[:, j]|| * ||down[j, :]||: the most unit j can add
  to the block's output per unit of input. A block reused at every step (ACT, PonderNet) is
  pruned once;
- attention heads (the language model's CausalAttention, the classifier transformer's
  nnx.MultiHeadAttention) are ranked by magnitude too: the norm of the head's query, key and
  value columns times the norm of its rows of the output projection;
- experts are ranked by a score per expert of each MoE layer, measured on data by the caller
  (adaptive.evaluation.pruning: routed load and gate mass on the validation split); at least k
  are kept, since a token is routed to k of them.

`fraction` is the share removed from each (rounded down, at least one unit or head kept).
Layers stacked on a leading axis (a layer per step: model.share_weights=false) are pruned layer
by layer, each keeping its own best units and heads (the same number in every layer, so they
stay one stacked array).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.nn.lm_blocks import CausalAttention
from adaptive.nn.moe import MoEFeedForward


def feed_forward_blocks(model: nnx.Module) -> list[nnx.Module]:
    """The blocks with an `up` -> `down` pair of Linear layers, each once."""
    return [
        m
        for _, m in nnx.iter_graph(model)
        if isinstance(getattr(m, "up", None), nnx.Linear) and isinstance(getattr(m, "down", None), nnx.Linear)
    ]


def moe_layers(model: nnx.Module) -> list[MoEFeedForward]:
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, MoEFeedForward)]


def attention_layers(model: nnx.Module) -> list[nnx.Module]:
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, (CausalAttention, nnx.MultiHeadAttention))]


class Shapes(NamedTuple):
    """The widths pruning may have cut, as a model's modules stand (None: the model has none)."""

    ffn_hidden: int | None  # hidden units of the (first) feed-forward block
    attention_width: int | None  # heads x head width of the (first) attention layer
    num_experts: int | None  # experts of the (first) MoE layer

    def priced(self, cfg) -> tuple:
        """(`cfg` with these experts, the widths the FLOPs counters take as keyword arguments)."""
        if self.num_experts is not None:
            cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, num_experts=self.num_experts))
        return cfg, {"ffn_hidden": self.ffn_hidden, "attention_width": self.attention_width}


def shapes_of(model: nnx.Module) -> Shapes:
    """The model's current widths, for FLOPs counted on the shapes XLA runs (pruned or not)."""
    blocks = [m for _, m in nnx.iter_graph(model) if hasattr(getattr(m, "down", None), "kernel")]  # quantized too
    attention, layers = attention_layers(model), moe_layers(model)
    inner = None
    if attention and isinstance(attention[0], CausalAttention):
        inner = attention[0].inner
    elif attention:  # nnx.MultiHeadAttention: [H, K, D] output kernel
        inner = attention[0].num_heads * attention[0].head_dim
    hidden = blocks[0].down.kernel.shape[-2] if blocks else None  # [(layers,) hidden, width]
    return Shapes(hidden, inner, layers[0].num_experts if layers else None)


def head_scores(layer: nnx.Module) -> np.ndarray:
    """Per head: ||its q, k, v columns|| * ||its output rows||."""
    if isinstance(layer, CausalAttention):
        qkv = np.asarray(layer.qkv.kernel[...]).reshape(-1, 3, layer.heads, layer.head_width)
        out = np.asarray(layer.out.kernel[...]).reshape(layer.heads, layer.head_width, -1)
        inputs = np.sqrt((qkv**2).sum(axis=(0, 1, 3)))
    else:  # nnx.MultiHeadAttention: q, k, v kernels [(layers,) D, H, K], output [(layers,) H, K, D]
        parts = [np.asarray(getattr(layer, n).kernel[...]) for n in ("query", "key", "value")]
        out = np.asarray(layer.out.kernel[...])
        inputs = np.sqrt(sum((p**2).sum(axis=(-3, -1)) for p in parts))
    return inputs * np.sqrt((out**2).sum(axis=(-2, -1)))


def kept(scores, fraction: float, least: int = 1) -> np.ndarray:
    """Indices (ascending) of the highest scores after removing `fraction` of them, along the
    last axis (scores of stacked layers: a row of indices per layer, as many in each)."""
    scores = np.asarray(scores, np.float64)
    count = max(least, scores.shape[-1] - int(np.floor(fraction * scores.shape[-1])))
    return np.sort(np.argsort(-scores, axis=-1, kind="stable")[..., :count], axis=-1)


def unit_scores(block: nnx.Module) -> np.ndarray:
    """Per hidden unit (of each stacked layer): ||its up column|| * ||its down row||."""
    up, down = np.asarray(block.up.kernel[...]), np.asarray(block.down.kernel[...])
    return np.linalg.norm(up, axis=-2) * np.linalg.norm(down, axis=-1)


def _take(w: jax.Array, keep: np.ndarray, axis: int) -> jax.Array:
    """w's entries `keep` along `axis` (counted from the end); with stacked layers (`keep` a row
    per layer, w's leading axis), each layer's own."""
    index = jnp.asarray(keep)
    if index.ndim == 1:
        return jnp.take(w, index, axis=axis)
    shape = [1] * w.ndim
    shape[0], shape[axis] = index.shape[0], index.shape[1]
    return jnp.take_along_axis(w, index.reshape(shape), axis=axis)


class NothingToPrune(ValueError):
    """A pruning fraction > 0 of a model with no unit this module removes: a "pruned" variant
    would be the model itself, reported as smaller."""


def prune_model(graphdef: nnx.GraphDef, params, fraction: float, expert_scores: list | None = None):
    """(graphdef, params) with `fraction` of every feed-forward's hidden units removed and, when
    `expert_scores` gives one score array per MoE layer (in `moe_layers` order), `fraction` of
    each layer's experts. fraction 0: unchanged."""
    if not 0 <= fraction < 1:
        raise ValueError(f"a pruning fraction must be in [0, 1); got {fraction}")
    if fraction == 0:
        return graphdef, params
    model = nnx.merge(graphdef, params)
    if not (feed_forward_blocks(model) or attention_layers(model) or moe_layers(model)):
        raise NothingToPrune(
            f"pruning {fraction:g}: this model has no feed-forward units, attention heads or experts to remove "
            "(a recurrent cell is pruned by nothing here); leave it out of --prune"
        )
    for block in feed_forward_blocks(model):
        _slice_units(block, kept(unit_scores(block), fraction))
    for layer in attention_layers(model):
        _slice_heads(layer, kept(head_scores(layer), fraction))
    layers = moe_layers(model)
    if expert_scores is not None:
        if len(expert_scores) != len(layers):
            raise ValueError(f"{len(expert_scores)} expert score arrays for {len(layers)} MoE layers")
        for layer, scores in zip(layers, expert_scores, strict=True):
            if len(scores) != layer.num_experts:
                raise ValueError(f"{len(scores)} expert scores for a layer of {layer.num_experts} experts")
            _slice_experts(layer, kept(scores, fraction, least=layer.k))
    return nnx.split(model, nnx.Param)


def _slice_units(block: nnx.Module, keep: np.ndarray) -> None:
    up, down = block.up, block.down
    up.kernel = nnx.Param(_take(up.kernel[...], keep, -1))
    if up.bias is not None:
        up.bias = nnx.Param(_take(up.bias[...], keep, -1))
    down.kernel = nnx.Param(_take(down.kernel[...], keep, -2))
    up.out_features = down.in_features = keep.shape[-1]


def _slice_heads(layer: nnx.Module, keep: np.ndarray) -> None:
    index = jnp.asarray(keep)
    if isinstance(layer, CausalAttention):
        width, heads, head_width = layer.qkv.kernel.shape[0], layer.heads, layer.head_width
        qkv = layer.qkv.kernel[...].reshape(width, 3, heads, head_width)[:, :, index]
        layer.qkv.kernel = nnx.Param(qkv.reshape(width, -1))
        out = layer.out.kernel[...].reshape(heads, head_width, -1)[index]
        layer.out.kernel = nnx.Param(out.reshape(len(keep) * head_width, -1))
        layer.heads = len(keep)
        return
    heads = keep.shape[-1]
    for name in ("query", "key", "value"):  # kernels [(layers,) D, H, K], biases [(layers,) H, K]
        projection = getattr(layer, name)
        projection.kernel = nnx.Param(_take(projection.kernel[...], keep, -2))
        if projection.bias is not None:
            projection.bias = nnx.Param(_take(projection.bias[...], keep, -2))
        projection.out_features = (heads, projection.out_features[1])
    layer.out.kernel = nnx.Param(_take(layer.out.kernel[...], keep, -3))  # [(layers,) H, K, D]
    layer.out.in_features = (heads, layer.out.in_features[1])
    layer.num_heads = layer.num_kv_heads = heads


def _slice_experts(layer: MoEFeedForward, keep: np.ndarray) -> None:
    index = jnp.asarray(keep)
    for name in ("w_in", "b_in", "w_out", "b_out"):
        setattr(layer, name, nnx.Param(getattr(layer, name)[...][index]))
    layer.router.kernel = nnx.Param(layer.router.kernel[...][:, index])
    layer.router.out_features = layer.num_experts = len(keep)
