"""`adaptive bench moe`: the MoE layer against a dense FFN of the same active FLOPs.

The dense baseline is plain jnp matmuls (gelu(x @ W1 + b1) @ W2 + b2 with f = k * expert_hidden),
no module and no extra work. Forward + backward (gradients of a scalar loss with respect to the
input and every parameter) of: that dense FFN; the MoE layer with block dispatch (the default)
and with capacity buffers, at the training capacity factor; the same MoE computed by running
every expert on every token; a GShard-style one-hot dispatch (tokens x experts x capacity
einsums); and the `lax.ragged_dot` path. Then inference (forward only) with k = 1 and k = 2 experts
per token, each as its own compiled executable: dropless block dispatch (the default at inference)
beside capacity buffers at the eval capacity factor, and k as a traced argument of one executable.
All side by side in one run, medians after warm-up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adaptive.bench.results import write_json
from adaptive.compute.timing import time_side_by_side
from adaptive.evaluation.tables import print_table
from adaptive.nn.moe import MoEFeedForward


def dense_ffn(p: dict, x):
    return jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _dense_params(width: int, hidden: int) -> dict:
    rng = np.random.default_rng(1)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape) / np.sqrt(shape[0]), jnp.float32)  # noqa: E731
    return {"w1": normal(width, hidden), "b1": jnp.zeros(hidden), "w2": normal(hidden, width), "b2": jnp.zeros(width)}


def _all_experts(layer: MoEFeedForward, x):
    """Every expert on every token, weighted by the (capacity-free) top-k gates."""
    routing, _, _ = layer.route(x, train=True)
    gates = (
        jnp.zeros((x.shape[0], layer.num_experts))
        .at[routing.token_A, routing.expert_A]
        .add(jnp.where(routing.active_A, jax.nn.softmax(layer.router(x), -1)[routing.token_A, routing.expert_A], 0.0))
    )
    y = layer.experts(jnp.broadcast_to(x, (layer.num_experts, *x.shape)))  # [E, T, D]
    return jnp.einsum("etd,te->td", y, gates)


def _one_hot(layer: MoEFeedForward, x):
    """GShard-style dispatch and combine through [T, E, C] one-hot tensors."""
    routing, _, cap = layer.route(x, train=True)
    dispatch_TxExC = (
        jnp.zeros((x.shape[0], layer.num_experts, cap))
        .at[routing.token_A, routing.expert_A, jnp.minimum(routing.slot_A, cap - 1)]
        .add(routing.kept_A.astype(x.dtype))
    )
    combine_TxExC = (
        jnp.zeros_like(dispatch_TxExC)
        .at[routing.token_A, routing.expert_A, jnp.minimum(routing.slot_A, cap - 1)]
        .add(routing.gate_A)
    )
    y = layer.experts(jnp.einsum("tec,td->ecd", dispatch_TxExC, x))
    return jnp.einsum("ecd,tec->td", y, combine_TxExC)


def _fwd_bwd(module: nnx.Module, apply):
    graphdef, params = nnx.split(module, nnx.Param)

    def loss(p, x):
        return jnp.sum(apply(nnx.merge(graphdef, p), x) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda x: grad(params, x)


def run(
    *,
    tokens: int,
    width: int,
    hidden: int,
    experts: int,
    k: int,
    capacity_factor: float,
    block_size: int = 128,
    repeats: int,
    json_out: str | None,
) -> list[dict]:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((tokens, width)), jnp.float32)
    dense = _dense_params(width, k * hidden)
    layer = lambda **kw: MoEFeedForward(
        width, hidden, experts, k=k, capacity_factor=capacity_factor, block_size=block_size, rngs=nnx.Rngs(0), **kw
    )  # noqa: E731
    blocks, buffers, ragged = layer(), layer(dispatch="capacity"), layer(dispatch="ragged")
    dense_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(dense_ffn(p, x) ** 2), argnums=(0, 1)))
    train = {
        "dense_ffn_plain_jnp": lambda x: dense_grad(dense, x),
        "moe_block_dispatch": _fwd_bwd(blocks, lambda m, x: m(x).y_TxD),
        "moe_capacity_buffers": _fwd_bwd(buffers, lambda m, x: m(x).y_TxD),
        "moe_all_experts": _fwd_bwd(buffers, _all_experts),
        "moe_one_hot_dispatch": _fwd_bwd(buffers, _one_hot),
        "moe_ragged_dot": _fwd_bwd(ragged, lambda m, x: m(x).y_TxD),
    }
    ms = time_side_by_side({name: (lambda f=f: f(x)) for name, f in train.items()}, repeats=repeats)
    rows = [
        {"variant": name, "fwd_bwd_ms": t, "ratio_to_dense": t / ms["dense_ffn_plain_jnp"]} for name, t in ms.items()
    ]

    infer = {}
    for name, module in (("blocks_dropless", blocks), ("capacity_buffers", buffers)):
        graphdef, params = nnx.split(module, nnx.Param)
        for kk in range(1, k + 1):
            infer[f"inference_k{kk}_{name}"] = _inference(graphdef, params, kk)
    graphdef, params = nnx.split(blocks, nnx.Param)
    traced = jax.jit(lambda p, x, kk: nnx.merge(graphdef, p)(x, train=False, k_active=kk).y_TxD)
    for kk in range(1, k + 1):
        infer[f"inference_k{kk}_blocks_traced_k"] = lambda kk=kk: traced(params, x, jnp.int32(kk))
    dense_fwd = jax.jit(dense_ffn)
    infer["inference_dense_ffn_plain_jnp"] = lambda: dense_fwd(dense, x)
    fwd = time_side_by_side(
        {name: (fn if name.endswith(("traced_k", "plain_jnp")) else (lambda f=fn: f(x))) for name, fn in infer.items()},
        repeats=repeats,
    )
    rows += [
        {"variant": name, "fwd_ms": t, "ratio_to_dense": t / fwd["inference_dense_ffn_plain_jnp"]}
        for name, t in fwd.items()
    ]
    print(
        f"T={tokens} d={width} expert f={hidden} E={experts} k={k} training capacity factor={capacity_factor} "
        f"block size {blocks.block_size}; inference: dropless blocks, or buffers at eval capacity factor "
        f"{buffers.eval_capacity_factor}; dense f={k * hidden} (plain jnp)"
    )
    print_table(rows, ["variant", "fwd_bwd_ms", "fwd_ms", "ratio_to_dense"])
    write_json(json_out, rows)
    return rows


def _inference(graphdef, params, k: int):
    """A forward pass compiled for exactly k experts per token: capacity (and work) scale with k."""

    def forward(p, x):
        layer = nnx.merge(graphdef, p)
        layer.k = k  # a static attribute: this executable's buffers are sized for k
        if layer.dispatch == "capacity":
            layer.eval_dropless = False  # buffers at the eval capacity factor, as before blocks
        return layer(x, train=False).y_TxD

    compiled = jax.jit(forward)
    return lambda x: compiled(params, x)
