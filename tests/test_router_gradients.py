"""The task loss alone trains the router, for every router setting a config can choose.

Routing picks experts discretely; the router learns from the task only through the gates that
weigh the experts' outputs. A setting whose gates are constant (one renormalised gate is p/p = 1)
sends the router nothing, which is why config_checks refuses it: checked here in both
directions, with the load-balancing and z losses off so that they cannot mask a zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adaptive.nn.moe import MoEFeedForward

T, D, E, C = 32, 8, 4, 3  # tokens, width, experts, classes


def router_grad_max(**settings) -> float:
    """max |d cross-entropy / d router kernel| of a MoE layer with a linear head on random data."""
    layer = MoEFeedForward(D, 16, E, balance_weight=0.0, z_weight=0.0, rngs=nnx.Rngs(0), **settings)
    # Router logits of a realistic spread (the 0.02 init makes every token's probabilities near
    # uniform, where top-p takes every expert and no case is tested).
    layer.router.kernel[...] = jax.random.normal(jax.random.key(1), (D, E))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, T))
    head = jnp.asarray(rng.standard_normal((D, C)), jnp.float32)
    graphdef, params = nnx.split(layer, nnx.Param)

    def task_loss(p):
        out = nnx.merge(graphdef, p)(x, train=True)
        logits = (x + out.y_TxD) @ head
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(task_loss)(params)
    return float(jnp.abs(grads["router"]["kernel"][...]).max())


SETTINGS = {
    "top_k k=1": dict(k=1, renormalize=False),
    "top_k k=2 renormalised": dict(k=2, renormalize=True),
    "top_k k=2": dict(k=2, renormalize=False),
    "top_k k=2 own priority": dict(k=2, renormalize=True, priority="own"),
    "top_k k=2 low capacity": dict(k=2, renormalize=True, capacity_factor=0.5),
    "top_k k=2 low capacity, own priority": dict(k=2, renormalize=True, capacity_factor=0.5, priority="own"),
    "top_p k=2": dict(k=2, router="top_p", top_p=0.5, renormalize=False),
    "top_p k=3 own priority": dict(k=3, router="top_p", top_p=0.5, renormalize=False, priority="own"),
    "expert_choice": dict(k=2, router="expert_choice"),
    "dropless top_k k=1": dict(k=1, renormalize=False, dropless=True),
    "dropless top_k k=2 renormalised": dict(k=2, renormalize=True, dropless=True),
    "dropless top_p k=2": dict(k=2, router="top_p", renormalize=False, dropless=True),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_the_task_loss_reaches_the_router(settings):
    assert router_grad_max(**settings) > 1e-4


@pytest.mark.parametrize(
    "settings",
    [dict(k=1, renormalize=True), dict(k=2, router="top_p", top_p=0.0, renormalize=True)],
    ids=["top_k k=1 renormalised", "top_p one expert each, renormalised"],
)
def test_one_renormalised_gate_starves_the_router(settings):
    """What the config refuses: every token's one gate is p/p = 1, so no gradient beyond float
    rounding (top_p = 0: the first choice already holds all the mass asked for)."""
    assert router_grad_max(**settings) < 1e-6
