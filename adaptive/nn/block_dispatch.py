"""Block-padded expert dispatch: experts at about the cost of their useful FLOPs, with static shapes.

MegaBlocks' idea (Gale et al. 2022) without a custom kernel. Kept assignments are laid out by
expert, each expert's group padded to a multiple of a block of b rows, so at most
ceil((A + E * (b - 1)) / b) blocks exist for A assignments, whatever the routing. One loop runs
the blocks; each block applies its own expert's whole FFN (both matmuls and the GELU) to its b
rows, so the hidden activations of a block stay in cache instead of making a round trip through
memory, and blocks past the last used one are skipped (`lax.cond`, which XLA:CPU does not run).

Compared with capacity buffers ([E, C, D], dispatch.py), nothing is padded to the capacity: an
expert's buffer holds exactly its tokens plus fewer than b rows. Compared with
`lax.ragged_dot`, which XLA:CPU runs densely (every expert on every row), only the useful rows
are multiplied. Routing is untouched: capacity routing still drops what it drops, dropless
routing drops nothing; the blocks only decide where the kept assignments are computed.

Gradients: a custom VJP keeps each block's pre-activation from the forward pass and runs the
backward block by block, accumulating each expert's weight gradients in place; autodiff through
the loop saves and copies far more (experiments/design_measurements.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from adaptive.nn import routing as R
from adaptive.nn.qweight import Operand, product

SMALLEST_BLOCK = 8


class BlockLayout(NamedTuple):
    row_A: jax.Array  # int32: each kept assignment's row in the blocked buffer (num_rows when not kept)
    source_R: jax.Array  # int32: the token filling each row (num_tokens, a zero row, for padding)
    expert_B: jax.Array  # int32: the expert each block runs
    used: jax.Array  # int32: blocks holding at least one assignment; the rest are skipped


def block_rows(num_assignments: int, num_experts: int, block_size: int) -> int:
    """Rows per block: `block_size`, or less for small batches (a block about one expert's share
    of the assignments, a power of two >= SMALLEST_BLOCK), so that a batch of 8 tokens is not
    padded to E blocks of 128 rows."""
    if not isinstance(num_assignments, int):  # a symbolic batch (an exported artifact): its
        return block_size  # blocks past the used ones cost a gather of padding rows, no matmuls
    share = max(1, -(-num_assignments // num_experts))
    fitted = max(SMALLEST_BLOCK, 1 << (share - 1).bit_length())
    return min(block_size, fitted)


def layout(routing: R.Routing, num_experts: int, num_tokens: int, block: int) -> BlockLayout:
    """Where each kept assignment goes: experts' groups in expert order, each padded to `block`.

    The order within an expert's group does not matter (each row is computed on its own), so the
    rows come from a stable sort by expert rather than from the routing's capacity slots: that also
    works for routings flattened from several groups, whose slots restart in every group.
    """
    num_assignments = routing.expert_A.shape[0]
    num_blocks = -(-(num_assignments + num_experts * (block - 1)) // block)
    num_rows = num_blocks * block
    key_A = jnp.where(routing.kept_A, routing.expert_A, num_experts)  # not kept: after every group
    order = jnp.argsort(key_A, stable=True)
    key_sorted = key_A[order]
    counts = jnp.zeros(num_experts + 1, jnp.int32).at[key_A].add(1)[:num_experts]
    padded = -(-counts // block) * block
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    first = jnp.cumsum(counts) - counts  # where each expert's group starts in the sorted order
    expert_sorted = jnp.minimum(key_sorted, num_experts - 1)
    row_sorted = padded_start[expert_sorted] + jnp.arange(num_assignments) - first[expert_sorted]
    row_sorted = jnp.where(key_sorted < num_experts, row_sorted, num_rows)
    row_A = jnp.zeros(num_assignments, jnp.int32).at[order].set(row_sorted.astype(jnp.int32))
    source_R = jnp.full((num_rows + 1,), num_tokens, jnp.int32).at[row_A].set(routing.token_A)[:num_rows]
    block_start = jnp.arange(num_blocks) * block
    expert_B = jnp.minimum(jnp.searchsorted(padded_end, block_start, side="right"), num_experts - 1)
    return BlockLayout(row_A, source_R, expert_B.astype(jnp.int32), (padded_end[-1] // block).astype(jnp.int32))


def experts_in_blocks(
    x_TxD: jax.Array, routing: R.Routing, weights: tuple, num_experts: int, block_size: int
) -> jax.Array:
    """Each token's gate-weighted sum of its kept experts' outputs ([T, D]), computed in blocks.

    `weights`: (w_in [E, D, F], b_in [E, F], w_out [E, F, D], b_out [E, D]) of GELU expert MLPs,
    the matrices as `qweight.Operand`s: float32 ones train (a custom gradient), bfloat16 and
    integer ones (a quantized model) run forward only, each block's product in their precision.
    """
    num_tokens, width = x_TxD.shape
    block = block_rows(routing.expert_A.shape[0], num_experts, block_size)
    lay = layout(routing, num_experts, num_tokens, block)
    padded_x = jnp.concatenate([x_TxD, jnp.zeros((1, width), x_TxD.dtype)])  # row T: a padding row
    x_NxBxD = padded_x[lay.source_R].reshape(-1, block, width)
    w_in, b_in, w_out, b_out = weights
    if w_in.scale is None and w_in.values.dtype == jnp.float32:
        y_NxBxD = block_ffn(x_NxBxD, w_in.values, b_in, w_out.values, b_out, lay.expert_B, lay.used)
    else:
        y_NxBxD = _scan_blocks(x_NxBxD, w_in, b_in, w_out, b_out, lay.expert_B, lay.used)[0]
    y_RxD = y_NxBxD.reshape(-1, width)
    row = jnp.minimum(lay.row_A, y_RxD.shape[0] - 1)  # dropped assignments have gate 0
    values = y_RxD[row] * routing.gate_A[:, None].astype(y_RxD.dtype)
    return jnp.zeros_like(x_TxD).at[routing.token_A].add(values)


@jax.custom_vjp
def block_ffn(x_NxBxD, w_in, b_in, w_out, b_out, expert_N, used):
    """gelu(x @ w_in[e] + b_in[e]) @ w_out[e] + b_out[e] for each block n with e = expert_N[n];
    blocks n >= used are padding and come out zero."""
    return _block_ffn_forward(x_NxBxD, w_in, b_in, w_out, b_out, expert_N, used)[0]


def _block_ffn_forward(x_NxBxD, w_in, b_in, w_out, b_out, expert_N, used):
    y, pre = _scan_blocks(x_NxBxD, Operand(w_in, None), b_in, Operand(w_out, None), b_out, expert_N, used)
    return y, (x_NxBxD, w_in, b_in, w_out, b_out, expert_N, used, pre)


def _scan_blocks(x_NxBxD, w_in: Operand, b_in, w_out: Operand, b_out, expert_N, used):
    """(outputs, pre-activations) of every block, each through its expert's MLP (padding blocks
    n >= used skipped: zeros)."""
    rows, hidden = x_NxBxD.shape[1], w_in.values.shape[-1]

    def run(x_BxD, e):
        def of_expert(x, w, acc):
            return jnp.matmul(x, w[e], preferred_element_type=acc)

        pre_BxF = product(x_BxD, w_in, of_expert, lambda s: s[e]) + b_in[e]
        return product(jax.nn.gelu(pre_BxF), w_out, of_expert, lambda s: s[e]) + b_out[e], pre_BxF

    def skip(x_BxD, e):
        return jnp.zeros_like(x_BxD), jnp.zeros((rows, hidden), x_BxD.dtype)

    def body(n, inputs):
        x_BxD, e = inputs
        return n + 1, jax.lax.cond(n < used, run, skip, x_BxD, e)

    return jax.lax.scan(body, 0, (x_NxBxD, expert_N))[1]


def _block_ffn_backward(saved, dy_NxBxD):
    x_NxBxD, w_in, b_in, w_out, b_out, expert_N, used, pre_NxBxF = saved

    def run(grads, inputs):
        g_w_in, g_b_in, g_w_out, g_b_out = grads
        x_BxD, pre_BxF, dy_BxD, e, _ = inputs
        h_BxF, gelu_vjp = jax.vjp(jax.nn.gelu, pre_BxF)
        g_w_out = g_w_out.at[e].add(h_BxF.T @ dy_BxD)
        g_b_out = g_b_out.at[e].add(dy_BxD.sum(0))
        (dpre_BxF,) = gelu_vjp(dy_BxD @ w_out[e].T)
        g_w_in = g_w_in.at[e].add(x_BxD.T @ dpre_BxF)
        g_b_in = g_b_in.at[e].add(dpre_BxF.sum(0))
        return (g_w_in, g_b_in, g_w_out, g_b_out), dpre_BxF @ w_in[e].T

    def body(grads, inputs):
        skip = lambda g, i: (g, jnp.zeros_like(i[0]))  # noqa: E731
        return jax.lax.cond(inputs[-1] < used, run, skip, grads, inputs)

    zeros = tuple(jnp.zeros_like(a) for a in (w_in, b_in, w_out, b_out))
    steps = jnp.arange(x_NxBxD.shape[0])
    grads, dx = jax.lax.scan(body, zeros, (x_NxBxD, pre_NxBxF, dy_NxBxD, expert_N, steps))
    return (dx, *grads, None, None)


block_ffn.defvjp(_block_ffn_forward, _block_ffn_backward)
