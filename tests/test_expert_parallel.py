"""Expert parallelism on 8 host CPU devices equals one device (outputs and gradients, 1e-5), on
a 1-D `expert` mesh, a 2-D (data, expert) mesh and a mesh of one; and a layer built
expert-parallel (as the config builds it when mesh.expert > 1) and traced under the mesh takes
that path by itself (as in training), while a layer built without it never does.

Runs in a subprocess: XLA_FLAGS must be set before JAX starts, and the rest of the suite keeps
one device. Each subprocess runs several cases to pay JAX's start-up once.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = r"""
import json, sys
from functools import partial
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from adaptive.nn.moe import MoEFeedForward
from adaptive.nn.expert_parallel import moe_expert_parallel

assert jax.device_count() == 8, jax.devices()
x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 16)), jnp.float32)
key = jax.random.key(3)  # router jitter: one key per routing group, split over the devices


def outputs_and_grads(forward, params):  # jitted: eager ops on 8 devices are slow

    def loss(p, x):
        out = forward(p, x)
        return jnp.mean(out.y_TxD ** 2) + out.aux_loss, out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return out, grads


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def case(router, groups, shape):
    if len(shape) == 1:  # jax.make_mesh's default: explicit axes
        mesh = jax.make_mesh(shape, ("expert",))
    else:  # the trainer's mesh: auto axes
        auto = (jax.sharding.AxisType.Auto,) * 2
        mesh = jax.make_mesh(shape, ("data", "expert"), axis_types=auto, devices=jax.devices()[: np.prod(shape)])
    layer = MoEFeedForward(
        16, 32, 8, k=2, router=router, num_groups=groups, capacity_factor=1.0, jitter=0.1, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(layer, nnx.Param)
    params = nnx.to_pure_dict(params)
    one = lambda p, x: nnx.merge(graphdef, p)(x, key=key)
    ep = lambda p, x: moe_expert_parallel(graphdef, p, x, mesh, key=key)
    out_one, g_one = outputs_and_grads(one, params)
    out_ep, g_ep = outputs_and_grads(ep, params)
    result = {
        "y": rel(out_one.y_TxD, out_ep.y_TxD),
        "aux": rel(out_one.aux_loss, out_ep.aux_loss),
        "metrics": max(rel(out_one.metrics[k], out_ep.metrics[k]) for k in out_one.metrics),
        "experts_used": bool((np.asarray(out_one.experts_T) == np.asarray(out_ep.experts_T)).all()),
        "grads": max(jax.tree.leaves(jax.tree.map(rel, g_one, g_ep))),
    }
    if len(shape) == 2:  # the layer itself, traced under the mesh as the train step is
        built = MoEFeedForward(  # as the config builds it: expert-parallel when mesh.expert > 1
            16, 32, 8, k=2, router=router, num_groups=groups, capacity_factor=1.0, jitter=0.1,
            expert_parallel=shape[-1] > 1, rngs=nnx.Rngs(0),
        )
        built_graphdef, _ = nnx.split(built, nnx.Param)
        limited = lambda g, p, x: nnx.merge(g, p)(x, key=key, k_active=1).y_TxD  # at most 1 expert a token
        y_one = jax.jit(partial(limited, graphdef))(params, x)
        with jax.set_mesh(mesh):
            traced = jax.jit(partial(limited, built_graphdef))
            result["context_y"] = rel(y_one, traced(params, x))
            result["context_all_to_alls"] = traced.lower(params, x).as_text().count("all_to_all")
            off = jax.jit(partial(limited, graphdef))  # built without the flag: never looks at the mesh
            result["off_all_to_alls"] = off.lower(params, x).as_text().count("all_to_all")
    return result


for spec in sys.argv[1:]:
    router, groups, shape = spec.split("/")
    print(json.dumps({"case": spec, **case(router, int(groups), tuple(int(n) for n in shape.split("x")))}))
"""


@pytest.mark.parametrize(
    "cases",
    [
        "top_k/8/8 top_k/8/2x4",
        pytest.param(  # two routing groups per device; expert choice; a mesh of one
            "top_k/16/8 top_k/16/2x4 expert_choice/8/8 expert_choice/8/2x4 top_k/8/1x1", marks=pytest.mark.slow
        ),
    ],
)
def test_expert_parallel_matches_one_device(cases):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *cases.split()], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["case"] for r in results] == cases.split()
    for r in results:
        assert r["y"] <= 1e-5 and r["aux"] <= 1e-5 and r["metrics"] <= 1e-5, r
        assert r["experts_used"], r
        assert r["grads"] <= 1e-5, r
        if "context_y" in r:
            assert r["context_y"] <= 1e-5, r
            expert_parallel = not r["case"].endswith("x1")
            assert (r["context_all_to_alls"] > 0) == expert_parallel, r  # expert=1: the single-device path
            assert r["off_all_to_alls"] == 0, r
