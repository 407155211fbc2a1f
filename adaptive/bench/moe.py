"""`adaptive bench moe`: the MoE layer against a dense FFN of the same active FLOPs.

Forward + backward (gradients of a scalar loss with respect to the input and every parameter)
of: a dense FFN with f = k * expert_hidden (the same active FLOPs as the MoE without padding);
the MoE layer as the framework runs it (slot dispatch into capacity buffers + one batched
einsum); the same MoE computed by running every expert on every token; a GShard-style one-hot
dispatch (tokens x experts x capacity einsums); and the dropless `lax.ragged_dot` path. Then
inference (forward only, eval capacity factor) with k = 1 and k = 2 experts per token, each as its
own compiled executable, and with k as a traced argument of one executable compiled for k_max.
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


class DenseFFN(nnx.Module):
    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


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
    repeats: int,
    json_out: str | None,
) -> list[dict]:
    x = jnp.asarray(np.random.default_rng(0).standard_normal((tokens, width)), jnp.float32)
    rngs = nnx.Rngs(0)
    dense = DenseFFN(width, k * hidden, rngs=rngs)
    moe = MoEFeedForward(width, hidden, experts, k=k, capacity_factor=capacity_factor, rngs=nnx.Rngs(0))
    dropless = MoEFeedForward(width, hidden, experts, k=k, dropless=True, rngs=nnx.Rngs(0))
    train = {
        "dense_equivalent_ffn": _fwd_bwd(dense, lambda m, x: m(x)),
        "moe_slot_dispatch": _fwd_bwd(moe, lambda m, x: m(x).y_TxD),
        "moe_all_experts": _fwd_bwd(moe, _all_experts),
        "moe_one_hot_dispatch": _fwd_bwd(moe, _one_hot),
        "moe_dropless_ragged_dot": _fwd_bwd(dropless, lambda m, x: m(x).y_TxD),
    }
    ms = time_side_by_side({name: (lambda f=f: f(x)) for name, f in train.items()}, repeats=repeats)
    rows = [
        {"variant": name, "fwd_bwd_ms": t, "ratio_to_dense": t / ms["dense_equivalent_ffn"]} for name, t in ms.items()
    ]

    graphdef, params = nnx.split(moe, nnx.Param)
    dense_graph, dense_params = nnx.split(dense, nnx.Param)
    infer = {f"inference_k{kk}_own_executable": _inference(graphdef, params, kk) for kk in range(1, k + 1)}
    traced = jax.jit(lambda p, x, kk: nnx.merge(graphdef, p)(x, train=False, k_active=kk).y_TxD)
    for kk in range(1, k + 1):
        infer[f"inference_k{kk}_traced_k"] = lambda kk=kk: traced(params, x, jnp.int32(kk))
    dense_fwd = jax.jit(lambda p, x: nnx.merge(dense_graph, p)(x))
    infer["inference_dense_equivalent_ffn"] = lambda: dense_fwd(dense_params, x)
    fwd = time_side_by_side(
        {name: (fn if name.endswith(("traced_k", "ffn")) else (lambda f=fn: f(x))) for name, fn in infer.items()},
        repeats=repeats,
    )
    rows += [
        {"variant": name, "fwd_ms": t, "ratio_to_dense": t / fwd["inference_dense_equivalent_ffn"]}
        for name, t in fwd.items()
    ]
    print(
        f"T={tokens} d={width} expert f={hidden} E={experts} k={k} capacity factor={capacity_factor} "
        f"(inference: eval capacity factor {moe.eval_capacity_factor}); dense f={k * hidden}"
    )
    print_table(rows, ["variant", "fwd_bwd_ms", "fwd_ms", "ratio_to_dense"])
    write_json(json_out, rows)
    return rows


def _inference(graphdef, params, k: int):
    """A forward pass compiled for exactly k experts per token: capacity (and work) scale with k."""

    def forward(p, x):
        layer = nnx.merge(graphdef, p)
        layer.k = k  # a static attribute: this executable's buffers are sized for k
        return layer(x, train=False).y_TxD

    compiled = jax.jit(forward)
    return lambda x: compiled(params, x)
