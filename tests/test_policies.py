"""Halting policies and backbones as registries; parameter paths stay what checkpoints hold."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.nn import halting as H
from adaptive.nn.backbones import BACKBONES, backbone_of
from adaptive.nn.depth import DepthModel
from adaptive.nn.models import build_model
from adaptive.nn.policies import POLICIES, Policy, get_policy, policy_of
from adaptive.nn.policies.base import expected_step_loss, last_step_output
from adaptive.training.losses import total_loss
from tests.helpers import ROOT


def test_the_registry_lists_exactly_the_policies_the_config_allows():
    assert sorted(POLICIES) == ["act", "early_exit", "none", "pondernet"]
    field = {f.name: f for f in dataclasses.fields(config_lib.HaltingConfig)}["policy"]
    assert set(field.metadata["choices"]) == set(POLICIES)
    for name, cls in POLICIES.items():
        assert issubclass(cls, Policy) and cls.name == name and get_policy(name) is cls
        assert policy_of(config_lib.HaltingConfig(policy=name)) == cls(config_lib.HaltingConfig(policy=name))


def test_an_unknown_policy_or_kind_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        get_policy("graves")
    assert str(err.value) == "halting policy 'graves' is not one of ('none', 'act', 'pondernet', 'early_exit')"
    model_cfg = dataclasses.replace(config_lib.ModelConfig(), kind="lstm")
    with pytest.raises(ValueError, match=r"^model.kind 'lstm' is not one of \('rnn', 'mlp', 'transformer'\)$"):
        backbone_of(model_cfg)
    assert sorted(BACKBONES) == ["mlp", "rnn", "transformer"]


class Spec:
    input_shape, num_classes = (16,), 2


# Top-level parameter names of old checkpoints: moving code between files must not change them.
PATHS = [
    ("parity.py:tiny", [], "none", {"blocks", "heads"}),
    ("parity.py:tiny", [], "act", {"blocks", "heads", "halt_unit"}),
    ("parity.py:tiny", [], "pondernet", {"blocks", "heads", "halt_unit"}),
    ("parity.py:tiny", ["--config.model.share_weights=false"], "early_exit", {"blocks", "heads"}),
    ("moe.py:tiny", [], "none", {"encoder", "blocks", "heads"}),
    ("digits.py:tiny", [], "early_exit", {"encoder", "blocks", "heads"}),
    (
        "parity.py:tiny",
        ["--config.model.kind=transformer", "--config.model.hidden=16"],
        "act",
        {"token_proj", "positions", "step_embedding", "blocks", "final_norm", "heads", "halt_unit"},
    ),
]


@pytest.mark.parametrize("config, extra, policy, top", PATHS)
def test_parameter_paths_are_those_of_old_checkpoints(config, extra, policy, top):
    cfg = config_lib.load(f"{ROOT}/configs/{config}", [*extra, f"--config.halting.policy={policy}"])
    params = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: build_model(cfg, Spec)), nnx.Param)[1])
    assert set(params) == top
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert "['heads']['kernel']" in paths and any(p.startswith("['blocks']") for p in paths)
    if "halt_unit" in top:
        assert {"['halt_unit']['kernel']", "['halt_unit']['bias']"} <= paths


class _RunToBudget(Policy):
    """A policy written outside the package: never halts early, every step weighs the same."""

    name = "run_to_budget"

    def combine(self, model, traj, limit_B):
        return last_step_output(traj, limit_B)

    def infer_step(self, model, run, t, h, acc, limit, key):
        logits = model.readout(h, t)
        run, now = H.exit_update(run, t, jnp.zeros(logits.shape[:1]), limit, 1.0)
        return run, jnp.where(now[:, None], logits, acc)

    def halt_steps(self, traj, limit_B):
        return jnp.broadcast_to(jnp.minimum(limit_B, traj.logits_NxBxC.shape[0]), limit_B.shape)

    def task_loss(self, out, labels_B):
        return expected_step_loss(out, labels_B)


def test_a_new_policy_plugs_in_by_registration_alone(monkeypatch):
    monkeypatch.setitem(POLICIES, _RunToBudget.name, _RunToBudget)
    halting = config_lib.HaltingConfig(policy=_RunToBudget.name, max_steps=5)
    model_cfg = dataclasses.replace(config_lib.ModelConfig(), kind="mlp", hidden=8, share_weights=False)
    model = DepthModel(model_cfg, halting, Spec.input_shape, Spec.num_classes, rngs=nnx.Rngs(params=0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16)), jnp.float32)
    budget = jnp.array([1, 2, 3, 9], jnp.int32)
    out = model.infer(x, budget)
    np.testing.assert_array_equal(out.steps_B, [1, 2, 3, 5])
    ref = model.infer_from_trajectory(model.trajectory(x, train=False), budget)
    np.testing.assert_array_equal(ref.steps_B, out.steps_B)
    np.testing.assert_allclose(ref.logits_BxC, out.logits_BxC, rtol=1e-5, atol=1e-5)
    loss, metrics = total_loss(model(x), jnp.arange(4) % 2, _RunToBudget.name, halting)
    assert np.isfinite(float(loss)) and float(metrics["steps_mean"]) == 5.0
