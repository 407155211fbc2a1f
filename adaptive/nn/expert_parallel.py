"""Expert parallelism: the MoE layer with its experts sharded over a mesh axis.

Each of the n devices on the `expert` axis holds E/n experts and 1/n of the tokens (its routing
groups). A device routes its own tokens over all E experts into per-expert buffers, an
all-to-all sends every buffer to the device that owns its expert, the local experts run once
over what they received, and a second all-to-all brings the outputs home to be combined. The
result equals `MoEFeedForward` with the same `num_groups` on one device: routing, capacity and
drops are per group either way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adaptive.nn import routing as R
from adaptive.nn.moe import MoEFeedForward, MoEOutput, combine, dispatch

EXPERT_PARAMS = ("w_in", "b_in", "w_out", "b_out")


def param_specs(params: dict, axis: str) -> dict:
    """PartitionSpecs for the layer's parameters: experts split on `axis`, the router replicated."""
    specs = {}
    for name, tree in params.items():
        spec = P(axis) if name in EXPERT_PARAMS else P()
        specs[name] = jax.tree.map(lambda _, s=spec: s, tree)
    return specs


def moe_expert_parallel(
    graphdef: nnx.GraphDef, params: dict, x_TxD: jax.Array, mesh: Mesh, *, axis: str = "expert", train: bool = True
) -> MoEOutput:
    """`MoEFeedForward(x)` computed with experts and tokens sharded over `mesh[axis]`."""
    n = mesh.shape[axis]
    layer_meta = nnx.merge(graphdef, params)
    if layer_meta.num_experts % n or layer_meta.num_groups % n:
        raise ValueError(
            f"num_experts={layer_meta.num_experts} and num_groups={layer_meta.num_groups} "
            f"must both divide over {n} devices on axis {axis!r}"
        )
    if layer_meta.dropless:
        raise ValueError("the dropless path is single-device; use capacity routing with expert parallelism")

    def local(params_local, x_local):
        layer: MoEFeedForward = nnx.merge(graphdef, params_local)
        groups = layer.num_groups // n
        x_GxSxD = x_local.reshape(groups, -1, x_local.shape[-1])
        routing, logits, cap = layer.route_groups(x_GxSxD, train, None, None)
        buffers = jax.vmap(lambda x, r: dispatch(x, r, layer.num_experts, cap))(x_GxSxD, routing)
        g, e, c, d = buffers.shape
        # [g, n, E/n, C, D]: chunk j of the expert axis goes to device j; received chunks come back
        # stacked by source device on the same axis.
        sent = jax.lax.all_to_all(buffers.reshape(g, n, e // n, c, d), axis, 1, 1, tiled=True)
        by_expert = sent.transpose(2, 1, 0, 3, 4).reshape(e // n, n * g * c, d)
        out = layer.experts(by_expert).reshape(e // n, n, g, c, d).transpose(2, 1, 0, 3, 4)
        back = jax.lax.all_to_all(out, axis, 1, 1, tiled=True).reshape(g, e, c, d)
        y = jax.vmap(lambda b, r: combine(b, r, x_GxSxD.shape[1]))(back, routing)
        result = layer.summarize(y.reshape(x_local.shape), routing, logits)
        # Groups are spread over devices: aux losses and metrics average over all of them.
        return result._replace(
            aux_loss=jax.lax.pmean(result.aux_loss, axis),
            metrics=jax.tree.map(lambda m: jax.lax.pmean(m, axis), result.metrics),
        )

    metrics = jax.eval_shape(lambda: R.routing_metrics(R.top_k(jnp.zeros((2, 2)), 1, 1, renormalize=False), 2))
    metric_specs = dict.fromkeys(metrics, P())
    specs = (param_specs(params, axis), P(axis))
    out_specs = MoEOutput(P(axis), P(), metric_specs, P(axis), P(axis))
    fn = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=out_specs)
    # Lay the inputs out as the specs say (a no-op when they already are).
    placed = jax.tree.map(lambda a, s: jax.reshard(a, NamedSharding(mesh, s)), (params, x_TxD), specs)
    return fn(*placed)
