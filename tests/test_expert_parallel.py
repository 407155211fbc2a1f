"""Expert parallelism on 8 host CPU devices equals one device (outputs and gradients, 1e-5).

Runs in a subprocess: XLA_FLAGS must be set before JAX starts, and the rest of the suite keeps
one device.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from adaptive.nn.moe import MoEFeedForward
from adaptive.nn.expert_parallel import moe_expert_parallel

router, groups = sys.argv[1], int(sys.argv[2])
assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((8,), ("expert",))
layer = MoEFeedForward(16, 32, 8, k=2, router=router, num_groups=groups, capacity_factor=1.0, rngs=nnx.Rngs(0))
graphdef, params = nnx.split(layer, nnx.Param)
params = nnx.to_pure_dict(params)
x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 16)), jnp.float32)

def loss(out):
    return jnp.mean(out.y_TxD ** 2) + out.aux_loss

one = lambda p, x: nnx.merge(graphdef, p)(x)
ep = lambda p, x: moe_expert_parallel(graphdef, p, x, mesh)
out_one, out_ep = one(params, x), jax.jit(ep)(params, x)
g_one = jax.grad(lambda p, x: loss(one(p, x)), argnums=(0, 1))(params, x)
g_ep = jax.jit(jax.grad(lambda p, x: loss(ep(p, x)), argnums=(0, 1)))(params, x)

def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))

print(json.dumps({
    "y": rel(out_one.y_TxD, out_ep.y_TxD),
    "aux": rel(out_one.aux_loss, out_ep.aux_loss),
    "drop": [float(out_one.metrics["moe/drop_fraction"]), float(out_ep.metrics["moe/drop_fraction"])],
    "experts_used": bool((np.asarray(out_one.experts_T) == np.asarray(out_ep.experts_T)).all()),
    "grads": jax.tree.leaves(jax.tree.map(rel, g_one, g_ep)),
}))
"""


@pytest.mark.parametrize(
    "router, groups",
    [
        ("top_k", 8),
        pytest.param("top_k", 16, marks=pytest.mark.slow),  # two routing groups per device
        pytest.param("expert_choice", 8, marks=pytest.mark.slow),
    ],
)
def test_expert_parallel_matches_one_device(router, groups):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, router, str(groups)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["y"] <= 1e-5 and result["aux"] <= 1e-5
    assert result["drop"][0] == result["drop"][1]
    assert result["experts_used"]
    assert max(result["grads"]) <= 1e-5, result["grads"]
