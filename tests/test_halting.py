"""Depth controllers: caps hold for any input, parameters and budget; scan and while_loop agree."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive import config as config_lib
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.nn import halting as H
from adaptive.nn.models import build_model
from adaptive.training.losses import total_loss
from tests.helpers import ROOT

CAP, BATCH, N_IN = 6, 8, 12
VARIANTS = [
    ("rnn", "act", True),
    ("rnn", "pondernet", True),
    ("rnn", "early_exit", True),
    ("mlp", "early_exit", False),
    ("mlp", "act", False),
    ("transformer", "act", True),
    ("transformer", "pondernet", True),
]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Spec:
    input_shape = (N_IN,)
    num_classes = 3


@functools.cache
def model_of(kind: str, policy: str, shared: bool, **halting):
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py",
        [
            f"--config.model.kind={kind}",
            f"--config.halting.policy={policy}",
            "--config.model.hidden=16",
            f"--config.halting.max_steps={CAP}",
            f"--config.model.share_weights={shared}",
        ],
    )
    cfg = dataclasses.replace(cfg, halting=dataclasses.replace(cfg.halting, **halting))
    model = build_model(cfg, Spec)
    graphdef, params = nnx.split(model, nnx.Param)
    infer = jax.jit(lambda p, x, b: nnx.merge(graphdef, p).infer(x, b))
    traj = jax.jit(lambda p, x, b: (lambda m: m.infer_from_trajectory(m.trajectory(x), b))(nnx.merge(graphdef, p)))
    train = jax.jit(lambda p, x, limit=None: nnx.merge(graphdef, p)(x, limit))
    return graphdef, nnx.to_pure_dict(params), infer, traj, train


def perturb(params: dict, seed: int, scale: float, halt_bias: float | None) -> dict:
    """Random parameters at a random scale; optionally the halting bias forced to a value."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    out = jax.tree.unflatten(tree, leaves)
    if halt_bias is not None and "halt_unit" in out:
        out["halt_unit"]["bias"] = jnp.full_like(out["halt_unit"]["bias"], halt_bias)
    return out


inputs = st.builds(
    lambda seed, scale: scale * np.random.default_rng(seed).standard_normal((BATCH, N_IN)).astype(np.float32),
    st.integers(0, 2**31),
    st.sampled_from([0.0, 0.1, 1.0, 100.0]),
)
budgets = st.lists(st.integers(1, CAP), min_size=BATCH, max_size=BATCH).map(lambda b: np.array(b, np.int32))


@pytest.mark.parametrize("kind, policy, shared", VARIANTS)
@SETTINGS
@given(
    x=inputs,
    budget=budgets,
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([0.0, 0.3, 3.0]),
    halt_bias=st.sampled_from([None, -1e4, 1e4, 0.0]),
)
def test_steps_never_exceed_budget_or_cap(kind, policy, shared, x, budget, seed, scale, halt_bias):
    _, params, infer, traj, _ = model_of(kind, policy, shared)
    params = perturb(params, seed, scale, halt_bias)
    out = infer(params, x, budget)
    steps = np.asarray(out.steps_B)
    assert (steps >= 1).all() and (steps <= np.minimum(budget, CAP)).all(), (steps, budget)
    assert np.isfinite(np.asarray(out.logits_BxC)).all()
    ref = traj(params, x, budget)  # the training-path (scan) rule over the same parameters
    np.testing.assert_array_equal(steps, np.asarray(ref.steps_B))
    np.testing.assert_allclose(out.logits_BxC, ref.logits_BxC, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind, policy, shared", [v for v in VARIANTS if v[1] != "early_exit"])
def test_adversarial_halting_units(kind, policy, shared):
    """A halting unit that never halts runs to the budget; one that halts at once stops at 1."""
    _, params, infer, _, _ = model_of(kind, policy, shared)
    x = np.random.default_rng(0).standard_normal((BATCH, N_IN)).astype(np.float32)
    budget = np.arange(BATCH, dtype=np.int32) % CAP + 1
    never = infer(perturb(params, 0, 0.0, -1e4), x, budget)
    np.testing.assert_array_equal(never.steps_B, budget)
    at_once = infer(perturb(params, 0, 0.0, 1e4), x, budget)
    np.testing.assert_array_equal(at_once.steps_B, np.ones(BATCH))


@pytest.mark.parametrize("threshold, expected", [(2.0, "budget"), (0.0, "one")])
def test_adversarial_exit_thresholds(threshold, expected):
    _, params, infer, _, _ = model_of("mlp", "early_exit", False, exit_threshold=threshold)
    x = np.random.default_rng(1).standard_normal((BATCH, N_IN)).astype(np.float32)
    budget = np.full(BATCH, 4, np.int32)
    steps = np.asarray(infer(params, x, budget).steps_B)
    np.testing.assert_array_equal(steps, budget if expected == "budget" else np.ones(BATCH))


@pytest.mark.parametrize("kind, policy, shared", VARIANTS)
def test_training_forward_matches_inference_at_the_cap(kind, policy, shared):
    """The scan (training) pass and the while_loop (inference) agree on the same parameters."""
    _, params, infer, _, train = model_of(kind, policy, shared)
    x = np.random.default_rng(2).standard_normal((BATCH, N_IN)).astype(np.float32)
    out, inf = train(params, x), infer(params, x, np.full(BATCH, CAP, np.int32))
    if policy == "act":  # both are the mean-field output of the same halting weights
        np.testing.assert_allclose(out.logits_BxC, inf.logits_BxC, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out.steps_B, inf.steps_B)
    else:  # training weighs every step; inference picks one of them
        picked = np.asarray(out.step_logits_NxBxC)[np.asarray(inf.steps_B) - 1, np.arange(BATCH)]
        np.testing.assert_allclose(picked, inf.logits_BxC, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, policy, shared", [v for v in VARIANTS if v[1] == "act"])
@pytest.mark.parametrize("halt_bias", [-1e4, None])
def test_training_under_request_caps_matches_inference_under_the_same_budgets(kind, policy, shared, halt_bias):
    """Request budgets in training (a step cap per example) halt where inference would."""
    _, params, infer, _, train = model_of(kind, policy, shared)
    params = perturb(params, 3, 0.3, halt_bias)
    x = np.random.default_rng(3).standard_normal((BATCH, N_IN)).astype(np.float32)
    limit = np.arange(BATCH, dtype=np.int32) % 3 + 1
    out, inf = train(params, x, limit), infer(params, x, limit)
    assert (np.asarray(out.steps_B) <= limit).all()
    np.testing.assert_array_equal(out.steps_B, inf.steps_B)
    np.testing.assert_allclose(out.logits_BxC, inf.logits_BxC, rtol=1e-5, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 9), st.floats(0.0, 0.5))
def test_halting_weights_sum_to_one_and_respect_the_limit(seed, n, eps):
    rng = np.random.default_rng(seed)
    probs = jnp.asarray(rng.uniform(0, 1, (n, 5)) ** rng.uniform(0.1, 5), jnp.float32)
    limit = jnp.asarray(rng.integers(1, n + 1, 5), jnp.int32)
    for halting in (H.act_weights(probs, limit, eps), H.pondernet_weights(probs, limit)):
        w = np.asarray(halting.weights_NxH)
        np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-5)
        assert (w >= -1e-7).all()
        after_limit = np.arange(1, n + 1)[:, None] > np.asarray(limit)[None]
        assert (w[after_limit] == 0).all()
    act = H.act_weights(probs, limit, eps)
    assert (np.asarray(act.steps_H) <= np.asarray(limit)).all()


def test_act_matches_graves_definition_by_hand():
    probs = jnp.array([[0.3], [0.5], [0.4], [0.9]])
    h = H.act_weights(probs, jnp.array([4]), eps=0.01)
    np.testing.assert_allclose(h.weights_NxH[:, 0], [0.3, 0.5, 0.2, 0.0], atol=1e-6)
    assert int(h.steps_H[0]) == 3
    np.testing.assert_allclose(h.ponder_H[0], 3 + 0.2, atol=1e-6)  # N + R


def test_pondernet_distribution_by_hand():
    lam = jnp.array([[0.5], [0.5], [0.5]])
    h = H.pondernet_weights(lam, jnp.array([3]))
    np.testing.assert_allclose(h.weights_NxH[:, 0], [0.5, 0.25, 0.25], atol=1e-6)
    np.testing.assert_allclose(h.ponder_H[0], 0.5 + 0.5 + 0.75, atol=1e-6)


@pytest.mark.parametrize("kind, policy, shared", VARIANTS)
def test_gradients_reach_blocks_heads_and_halting_unit(kind, policy, shared):
    graphdef, params, *_ = model_of(kind, policy, shared)
    cfg = config_lib.HaltingConfig(policy=policy)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((BATCH, N_IN)), jnp.float32)
    y = jnp.arange(BATCH) % 3
    grads = jax.grad(lambda p: total_loss(nnx.merge(graphdef, p)(x), y, policy, cfg)[0])(params)
    norms = {k: float(optax_norm(v)) for k, v in grads.items()}
    for name in ("blocks", "heads") + (("halt_unit",) if policy in ("act", "pondernet") else ()):
        assert norms[name] > 0, (name, norms)


def optax_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_ponder_cost_pushes_toward_fewer_steps():
    """With only the ponder cost, a gradient step on the halting bias raises halting probabilities."""
    graphdef, params, *_ = model_of("rnn", "act", True)
    cfg = config_lib.HaltingConfig(policy="act", tau=1.0)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((BATCH, N_IN)), jnp.float32)
    grads = jax.grad(lambda p: cfg.tau * nnx.merge(graphdef, p)(x).ponder_B.mean())(params)
    assert float(grads["halt_unit"]["bias"][0]) < 0  # descending it increases the bias


def test_predictor_rejects_bad_requests_with_one_line():
    graphdef, params, *_ = model_of("rnn", "act", True)
    predictor = BudgetedPredictor(graphdef, params, (N_IN,), CAP)
    good = np.zeros((2, N_IN), np.float32)
    logits, steps = predictor(good, 3)
    assert logits.shape == (2, 3) and (np.asarray(steps) <= 3).all()
    bad = [
        (np.zeros((2, N_IN + 1)), 3, "inputs must have shape [batch, 12]; got [2, 13]"),
        (np.zeros((0, N_IN)), 3, "empty batch"),
        (np.full((2, N_IN), np.nan), 3, "NaN or Inf in 2 of 2 examples"),
        (good, 0, f"step budget must be in [1, {CAP}]; got 0..0"),
        (good, CAP + 1, f"step budget must be in [1, {CAP}]"),
        (good, 2.5, "whole number of steps"),
        (np.array([["a"] * N_IN] * 2), 3, "must be real numbers"),
        (np.full((2, N_IN), 1e39), 3, "NaN or Inf in 2 of 2 examples"),  # finite in float64, Inf in float32
        (good, [1, 2, 3], "one number or one per example (2); got shape [3]"),
        (good, "a", "whole number of steps"),
        (good, True, "whole number of steps"),
        (good, float("nan"), "whole number of steps"),
    ]
    for x, budget, message in bad:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the refusal is the only word: no numpy warning before it
            with pytest.raises(ValueError) as err:
                predictor(x, budget)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_changing_the_budget_does_not_recompile():
    graphdef, params, *_ = model_of("rnn", "act", True)
    predictor = BudgetedPredictor(graphdef, params, (N_IN,), CAP)
    x = np.random.default_rng(5).standard_normal((4, N_IN)).astype(np.float32)
    predictor(x, 1)
    before = predictor._infer._cache_size()
    for budget in range(1, CAP + 1):
        predictor(x, budget)
    assert predictor._infer._cache_size() == before


@pytest.mark.parametrize("bias, expected", [(-1e4, "budget"), (1e4, "one"), (0.0, "within")])
def test_sampled_pondernet_halting_keeps_the_caps(bias, expected):
    _, params, infer, _, _ = model_of("rnn", "pondernet", True, pondernet_inference="sample")
    x = np.random.default_rng(6).standard_normal((BATCH, N_IN)).astype(np.float32)
    budget = np.arange(BATCH, dtype=np.int32) % CAP + 1
    steps = np.asarray(infer(perturb(params, 0, 0.0, bias), x, budget).steps_B)
    if expected == "budget":
        np.testing.assert_array_equal(steps, budget)
    elif expected == "one":
        np.testing.assert_array_equal(steps, np.ones(BATCH))
    else:  # a fair coin each step: anywhere from 1 to the budget
        assert ((steps >= 1) & (steps <= budget)).all()


def test_a_step_whose_update_is_not_finite_is_skipped_though_its_gradients_are():
    """Finite gradients can still make non-finite parameters (an optimizer that divides 0 by 0,
    an update that overflows): the step is skipped and the parameters stay as they were."""
    import optax

    from adaptive.training import steps

    graphdef, params, *_ = model_of("rnn", "act", True)
    cfg = config_lib.load(f"{ROOT}/configs/parity.py", ["--config.halting.policy=act"])
    batch = {"x": jnp.zeros((2, N_IN), jnp.float32), "y": jnp.zeros((2,), jnp.int32)}
    for tx, skipped in ((optax.sgd(1e-3), 0), (optax.scale(jnp.nan), 1), (optax.scale(jnp.inf), 1)):
        state = steps.init_state(graphdef, params, tx, cfg.halting, (N_IN,))
        after = jax.jit(steps.make_train_step(graphdef, tx, cfg.halting))(state, batch)
        assert int(after["skipped_steps"]) == skipped
        same = all(
            np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(params), strict=True)
        )
        assert same == bool(skipped) and all(np.isfinite(a).all() for a in jax.tree.leaves(after["params"]))
