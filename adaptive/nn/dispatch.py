"""Expert buffers: tokens dispatched into per-expert [E, C, D] buffers and outputs combined back.

Shared by the single-device MoE layer (adaptive/nn/moe.py) and its expert-parallel form
(adaptive/nn/expert_parallel.py), which differ only in where the buffers are run. Each kept
assignment is written to row `expert * capacity + slot` (one gather), and gathered back weighted
by its gate: nothing of size tokens x experts x capacity is built.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive.nn import routing as R


class MoEOutput(NamedTuple):
    y_TxD: jax.Array
    aux_loss: jax.Array  # load-balancing and z-loss, already weighted
    metrics: dict[str, jax.Array]
    experts_T: jax.Array  # int32: experts that actually processed each token
    soft_experts_T: jax.Array  # float: experts requested per token, differentiable for top-p routing


def dispatch(x_TxD: jax.Array, routing: R.Routing, num_experts: int, cap: int) -> jax.Array:
    """Kept assignments' tokens in their experts' buffers: [E, C, D], empty slots zero.

    A gather: each buffer row looks up the token that fills it, through an inverse map built
    by scattering int32 indices (cheap) rather than scattering whole token rows.
    """
    target_A, source_R = _row_maps(routing, num_experts, cap, x_TxD.shape[0])
    padded = jnp.concatenate([x_TxD, jnp.zeros((1, x_TxD.shape[-1]), x_TxD.dtype)])  # row T: an empty slot
    return padded[source_R].reshape(num_experts, cap, -1)


def combine(y_ExCxD: jax.Array, routing: R.Routing, num_tokens: int) -> jax.Array:
    """Each token's gate-weighted sum of its experts' outputs ([T, D]; 0 for all-dropped tokens)."""
    num_experts, cap, width = y_ExCxD.shape
    row = jnp.where(routing.kept_A, routing.expert_A * cap + routing.slot_A, 0)
    values = y_ExCxD.reshape(num_experts * cap, width)[row] * routing.gate_A[:, None].astype(y_ExCxD.dtype)
    return jnp.zeros((num_tokens, width), y_ExCxD.dtype).at[routing.token_A].add(values)


def _row_maps(routing: R.Routing, num_experts: int, cap: int, num_tokens: int) -> tuple[jax.Array, jax.Array]:
    """(buffer row of each assignment, or E*C when dropped; token filling each row, or T when empty)."""
    rows = num_experts * cap
    target_A = jnp.where(routing.kept_A, routing.expert_A * cap + routing.slot_A, rows)
    source_R = jnp.full((rows + 1,), num_tokens, jnp.int32).at[target_A].set(routing.token_A)[:rows]
    return target_A, source_R


def dispatch_groups(x_GxSxD: jax.Array, routing: R.Routing, num_experts: int, cap: int) -> jax.Array:
    """`dispatch` for each routing group: [G, E, C, D]."""
    return per_group(lambda x, r: dispatch(x, r, num_experts, cap), x_GxSxD, routing)


def combine_groups(y_GxExCxD: jax.Array, routing: R.Routing, group_tokens: int) -> jax.Array:
    """`combine` for each routing group: [G, S, D]."""
    return per_group(lambda y, r: combine(y, r, group_tokens), y_GxExCxD, routing)


def per_group(fn, *args):
    """`fn` over the leading (group) axis. One group is called directly: a vmap of size 1 around
    routing and dispatch slows the layer's forward and backward passes."""
    if jax.tree.leaves(args)[0].shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], args)))
    return jax.vmap(fn)(*args)
