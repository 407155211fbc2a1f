"""Expert parallelism: the MoE layer with its experts sharded on the mesh's `expert` axis and
its tokens on every mesh axis, exchanged by two all-to-alls.

Which path runs: a `MoEFeedForward` built with `expert_parallel=True` (from the config:
`mesh.expert` > 1, see `config.moe_layers`) comes here when it is traced under a context mesh
(`jax.set_mesh`; the trainer sets its mesh around its train and eval steps), which must then have
an `expert` axis of more than one device. Traced with no mesh set (the trainer's abstract first
trace, a one-device reader of the run) it runs its own single-device code, as every layer built
without the flag always does: GSPMD splits that over `data` like any other layer.

On a (data, expert) mesh of D x N devices, each device holds E/N experts (the same on every
`data` row) and 1/(D*N) of the tokens: its routing groups. A device routes its own tokens over
all E experts into per-expert buffers; an all-to-all along `expert` sends every buffer to the
device of its data row that owns the expert; the local experts run once over what they received;
a second all-to-all brings the outputs home to be combined. Aux losses and routing metrics are
means over groups, so they are averaged over every device. The result equals `MoEFeedForward`
with the same `num_groups` on one device: routing, capacity and drops are per group either way.
A 1-D mesh with only an `expert` axis works the same (D = 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adaptive.nn.dispatch import MoEOutput, combine_groups, dispatch_groups

AXIS = "expert"
EXPERT_PARAMS = ("w_in", "b_in", "w_out", "b_out")


def context_mesh() -> AbstractMesh | None:
    """The mesh an expert-parallel layer runs on: JAX's context mesh, None when none is set (or
    when already inside a shard_map over `expert`). A mesh that cannot shard experts is an error."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or AXIS in mesh.manual_axes:
        return None
    if mesh.shape.get(AXIS, 1) == 1:
        raise ValueError(
            f"an expert-parallel MoE layer needs a context mesh with an {AXIS!r} axis of more than one device; "
            f"got {dict(mesh.shape)}"
        )
    return mesh


def param_specs(params: dict, axis: str) -> dict:
    """PartitionSpecs for the layer's parameters: experts split on `axis`, the router replicated."""
    specs = {}
    for name, tree in params.items():
        spec = P(axis) if name in EXPERT_PARAMS else P()
        specs[name] = jax.tree.map(lambda _, s=spec: s, tree)
    return specs


def forward(
    layer: nnx.Module, x_TxD: jax.Array, mesh: AbstractMesh, *, train: bool, k_active=None, key=None
) -> MoEOutput:
    """`layer(x)` (a MoEFeedForward) computed expert-parallel on `mesh`."""
    graphdef, state = nnx.split(layer)
    return moe_expert_parallel(graphdef, nnx.to_pure_dict(state), x_TxD, mesh, train=train, k_active=k_active, key=key)


def moe_expert_parallel(
    graphdef: nnx.GraphDef,
    params: dict,
    x_TxD: jax.Array,
    mesh: Mesh | AbstractMesh,
    *,
    axis: str = AXIS,
    train: bool = True,
    k_active=None,
    key: jax.Array | None = None,
) -> MoEOutput:
    """`MoEFeedForward(x)` with experts sharded over `mesh[axis]` and tokens over all of `mesh`."""
    n, devices = mesh.shape[axis], mesh.size
    every = tuple(mesh.axis_names)  # tokens, in the mesh's device order (as the batch is split)
    meta = nnx.merge(graphdef, params)
    experts, groups = meta.num_experts, meta.num_groups
    if experts % n or groups % devices:
        raise ValueError(
            f"num_experts={experts} must divide over {n} devices on axis {axis!r} and num_groups={groups} "
            f"over the mesh's {devices} devices {dict(mesh.shape)}"
        )
    if meta.dropless:
        raise ValueError("the dropless path is single-device; use capacity routing with expert parallelism")
    local_groups = groups // devices

    def local(params_local, x_local, k_local, keys_local):
        layer = nnx.merge(graphdef, params_local)
        x_GxSxD = x_local.reshape(local_groups, -1, x_local.shape[-1])
        routing, logits, cap = layer.route_groups(x_GxSxD, train, k_local, keys_local)
        buffers = dispatch_groups(x_GxSxD, routing, experts, cap)
        g, e, c, d = buffers.shape
        # [g, n, E/n, C, D]: chunk j of the expert axis goes to device j of this data row;
        # received chunks come back stacked by source device on the same axis.
        sent = jax.lax.all_to_all(buffers.reshape(g, n, e // n, c, d), axis, 1, 1, tiled=True)
        by_expert = sent.transpose(2, 1, 0, 3, 4).reshape(e // n, n * g * c, d)
        out = layer.experts(by_expert).reshape(e // n, n, g, c, d).transpose(2, 1, 0, 3, 4)
        back = jax.lax.all_to_all(out, axis, 1, 1, tiled=True).reshape(g, e, c, d)
        y = combine_groups(back, routing, x_GxSxD.shape[1])
        result = layer.summarize(y.reshape(x_local.shape), routing, logits)
        # Groups are spread over every device: aux losses and metrics average over all of them.
        mean = lambda v: jax.lax.pmean(v, every)  # noqa: E731
        return result._replace(aux_loss=mean(result.aux_loss), metrics=jax.tree.map(mean, result.metrics))

    keys = None if key is None else jax.random.split(key, groups)  # one per group, as on one device
    k_active = None if k_active is None else jnp.asarray(k_active)
    args = (params, x_TxD, k_active, keys)
    specs = (param_specs(params, axis), P(every), P(), P(every))
    if AxisType.Explicit in mesh.axis_types:  # explicit axes: lay the inputs out as the specs say
        place = lambda s, a: jax.reshard(a, NamedSharding(mesh, s))  # noqa: E731
        args = jax.tree.map(place, specs, args, is_leaf=lambda s: isinstance(s, P))
    out_specs = MoEOutput(P(every), P(), P(), P(every), P(every))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=out_specs)(*args)
