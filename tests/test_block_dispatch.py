"""Block-padded expert dispatch: the same outputs and gradients as capacity buffers for every
router, its layout's bounds for any routing (adversarial ones included), dropless inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive.nn import block_dispatch as B
from adaptive.nn import routing as R
from adaptive.nn.moe import MoEFeedForward

E, D, F = 4, 8, 16


def _pair(**kw):
    """The same layer (same parameters) with block and capacity dispatch."""
    blocks = MoEFeedForward(D, F, E, rngs=nnx.Rngs(0), dispatch="blocks", **kw)
    buffers = MoEFeedForward(D, F, E, rngs=nnx.Rngs(0), dispatch="capacity", **kw)
    return blocks, buffers


ROUTERS = {
    "top_k k=1": dict(k=1, renormalize=False),
    "top_k k=2": dict(k=2),
    "top_k k=3 tight capacity": dict(k=3, capacity_factor=0.5),
    "top_p": dict(k=3, router="top_p", renormalize=False),
    "expert_choice": dict(router="expert_choice"),
    "dropless": dict(k=2, dropless=True),
    "4 groups": dict(k=2, num_groups=4, capacity_factor=1.0),
}


FAST = ("top_k k=2", "top_k k=3 tight capacity", "4 groups")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(ROUTERS)])
def test_blocks_compute_what_capacity_buffers_compute(name):
    """Every router, in training and at inference, on plain inputs and on inputs that send every
    token to the same experts (a large value on one feature)."""
    blocks, buffers = _pair(**ROUTERS[name])
    x = jnp.asarray(np.random.default_rng(0).standard_normal((24, D)), jnp.float32)
    for skew in (0.0, 50.0):
        skewed = x.at[:, 0].add(skew)
        for train in (True, False):
            a, b = blocks(skewed, train=train), buffers(skewed, train=train)
            np.testing.assert_allclose(np.asarray(a.y_TxD), np.asarray(b.y_TxD), rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(np.asarray(a.experts_T), np.asarray(b.experts_T))


@pytest.mark.parametrize("name", ["top_k k=2", "top_k k=3 tight capacity", "expert_choice"])
def test_block_gradients_equal_capacity_gradients(name):
    """The custom backward pass (weights accumulated per expert, block by block) against autodiff
    through capacity buffers, for the input, the router and every expert parameter."""
    blocks, buffers = _pair(**ROUTERS[name])
    x = jnp.asarray(np.random.default_rng(1).standard_normal((24, D)), jnp.float32)

    def grads(layer):
        graphdef, params = nnx.split(layer, nnx.Param)
        loss = lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x).y_TxD))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(params, x)

    got, want = grads(blocks), grads(buffers)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(got[0]["w_in"][...]).sum()) > 0


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    tokens=st.sampled_from([1, 7, 33, 70]),  # a few shapes, each compiled once
    k=st.integers(1, 3),
    experts=st.sampled_from([3, 8]),
    block=st.sampled_from([8, 16, 128]),
    one_expert=st.booleans(),
)
def test_layout_puts_each_kept_assignment_in_its_experts_block_within_the_padding_bound(
    seed, tokens, k, experts, block, one_expert
):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((tokens, experts)).astype(np.float32)
    if one_expert:  # adversarial: every token's first choice is expert 0
        logits[:, 0] += 100.0
    routing = R.top_k(jnp.asarray(logits), k, R.capacity(tokens, experts, k, 1.0), renormalize=True)
    b = B.block_rows(tokens * k, experts, block)
    lay = B.layout(routing, experts, tokens, b)
    kept = np.asarray(routing.kept_A)
    rows = np.asarray(lay.row_A)[kept]
    num_rows = lay.source_R.shape[0]
    assert num_rows == b * -(-(tokens * k + experts * (b - 1)) // b)  # the static bound
    assert len(set(rows.tolist())) == len(rows) and (rows < num_rows).all()
    np.testing.assert_array_equal(np.asarray(lay.expert_B)[rows // b], np.asarray(routing.expert_A)[kept])
    np.testing.assert_array_equal(np.asarray(lay.source_R)[rows], np.asarray(routing.token_A)[kept])
    used = int(lay.used)
    assert (rows < used * b).all()
    assert used * b <= kept.sum() + experts * (b - 1)  # fewer than a block of padding per expert
    assert (np.asarray(lay.source_R)[used * b :] == tokens).all()  # unused rows are padding


def test_small_batches_get_small_blocks():
    assert B.block_rows(2 * 4096, 8, 128) == 128
    assert B.block_rows(2 * 8, 8, 128) == B.SMALLEST_BLOCK
    assert B.block_rows(2 * 100, 8, 128) == 32


def test_inference_is_dropless_by_default_and_capacity_routing_drops_when_asked():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((32, D)), jnp.float32).at[:, 0].add(30.0)
    skewed = dict(k=2, capacity_factor=0.25, eval_capacity_factor=0.25)
    dropless, _ = _pair(**skewed)
    capped, _ = _pair(**skewed, eval_dropless=False)
    assert float(dropless(x, train=False).metrics["moe/drop_fraction"]) == 0.0
    assert float(capped(x, train=False).metrics["moe/drop_fraction"]) > 0.0
    assert float(dropless(x, train=True).metrics["moe/drop_fraction"]) > 0.0  # training keeps its capacity


def test_an_unknown_dispatch_is_refused():
    with pytest.raises(ValueError, match="dispatch 'dense' is not one of"):
        MoEFeedForward(D, F, E, rngs=nnx.Rngs(0), dispatch="dense")
