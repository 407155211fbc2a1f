"""PonderNet's sampled halting (Banino et al. 2021, section 2.5): a coin with probability lambda_n
at each step, one key per example, the step budget a hard cap."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adaptive import config as config_lib
from adaptive.inference.infer import budgeted_infer, example_keys, with_halting
from adaptive.inference.predictor import BudgetedPredictor
from adaptive.nn import halting as H
from adaptive.nn.models import build_model
from tests.helpers import ROOT

CAP, N_IN = 6, 12


class Spec:
    input_shape = (N_IN,)
    num_classes = 2


def pondernet(inference: str = "sample"):
    """(graphdef, params) of a small PonderNet RNN halting by `inference`."""
    cfg = config_lib.load(
        f"{ROOT}/configs/parity.py",
        ["--config.halting.policy=pondernet", "--config.model.hidden=16", f"--config.halting.max_steps={CAP}"],
    )
    cfg = dataclasses.replace(cfg, halting=dataclasses.replace(cfg.halting, pondernet_inference=inference))
    graphdef, params = nnx.split(build_model(cfg, Spec), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def with_halt_unit(params: dict, kernel_scale: float, bias: float) -> dict:
    """The halting unit set by hand: its kernel scaled, its bias fixed (lambda = sigmoid(logit))."""
    params = jax.tree.map(lambda v: v, params)
    unit = params["halt_unit"]
    unit["kernel"] = unit["kernel"] * kernel_scale
    unit["bias"] = jnp.full_like(unit["bias"], bias)
    return params


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, N_IN)).astype(np.float32)


@pytest.fixture(scope="module")
def sampled():
    graphdef, params = pondernet()
    return graphdef, params, jax.jit(budgeted_infer(graphdef))


@pytest.mark.parametrize("bias", [-1e4, -30.0])
def test_a_halting_unit_that_never_halts_stops_at_the_budget(sampled, bias):
    graphdef, params, infer = sampled
    budget = (np.arange(32) % CAP + 1).astype(np.int32)
    steps = np.asarray(infer(with_halt_unit(params, 0.0, bias), inputs(32), budget).steps_B)
    np.testing.assert_array_equal(steps, budget)


def test_a_halting_unit_that_always_halts_stops_after_one_step(sampled):
    graphdef, params, infer = sampled
    steps = np.asarray(infer(with_halt_unit(params, 0.0, 1e4), inputs(32), np.int32(CAP)).steps_B)
    np.testing.assert_array_equal(steps, np.ones(32))


def test_sampled_steps_are_deterministic_per_seed_and_input(sampled):
    graphdef, params, infer = sampled
    params = with_halt_unit(params, 0.0, 0.0)  # a fair coin at every step
    x, cap = inputs(256), np.int32(CAP)
    first = np.asarray(infer(params, x, cap).steps_B)
    np.testing.assert_array_equal(first, np.asarray(infer(params, x, cap).steps_B))
    other = np.asarray(infer(params, x, cap, jax.random.key(1)).steps_B)
    assert (other != first).mean() > 0.3  # another seed, other coins
    # An example's coins are its own: the same in a permuted batch and in a batch of one.
    order = np.random.default_rng(1).permutation(256)
    np.testing.assert_array_equal(np.asarray(infer(params, x[order], cap).steps_B), first[order])
    assert int(infer(params, x[7:8], cap).steps_B[0]) == first[7]


def test_example_keys_depend_on_every_entry_and_on_nothing_else():
    key = jax.random.key(0)
    x = np.sign(inputs(4)).astype(np.float32)  # parity-like entries
    flipped = x.copy()
    flipped[:, [2, 5]] *= -1  # two signs flipped: a collision for a linear hash of the bits
    data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731
    a, b = data(example_keys(key, x)), data(example_keys(key, flipped))
    assert not (a == b).all(-1).any()
    np.testing.assert_array_equal(data(example_keys(key, x[::-1])), a[::-1])
    assert len({tuple(r) for r in data(example_keys(key, np.zeros((3, N_IN), np.int32)))}) == 1


def test_mean_sampled_step_matches_the_halting_distribution_of_the_lambdas(sampled):
    """Over many inputs, the mean sampled step is the mean of sum_t t p_t, with p_t the
    distribution the model's own lambdas imply (lambda forced to 1 at the cap)."""
    graphdef, params, infer = sampled
    params = with_halt_unit(params, 3.0, -1.0)  # lambdas that differ by input and step
    x = inputs(4000, seed=2)
    steps = np.asarray(infer(params, x, np.int32(CAP)).steps_B, float)
    model = nnx.merge(graphdef, params)
    lam = jax.nn.sigmoid(model.trajectory(jnp.asarray(x), train=False).halt_logits_NxH)
    weights = np.asarray(H.pondernet_weights(lam, jnp.full((len(x),), CAP)).weights_NxH)
    t = np.arange(1, CAP + 1)[:, None]
    expected = (weights * t).sum(0)
    spread = np.sqrt(((weights * t**2).sum(0) - expected**2).mean() / len(x))
    assert 0.5 < expected.mean() - 1 < CAP - 1.5  # the test is not trivial: halting varies
    assert abs(steps.mean() - expected.mean()) < 4 * spread
    # The share that halts at each step matches the mean of p_t there too.
    shares = np.bincount(steps.astype(int), minlength=CAP + 1)[1:] / len(x)
    np.testing.assert_allclose(shares, weights.mean(1), atol=0.03)


def test_with_halting_switches_a_threshold_model_to_sampling_and_back():
    graphdef, params = pondernet("threshold")
    params = with_halt_unit(params, 0.0, 0.0)  # lambda = 0.5: threshold 0.5 halts at step 1
    x, cap = inputs(64), np.int32(CAP)
    assert (np.asarray(jax.jit(budgeted_infer(graphdef))(params, x, cap).steps_B) == 1).all()
    sampling = with_halting(graphdef, params, pondernet_inference="sample")
    steps = np.asarray(jax.jit(budgeted_infer(sampling))(params, x, cap).steps_B)
    assert steps.max() > 1 and steps.min() >= 1 and steps.max() <= CAP
    back = with_halting(sampling, params, pondernet_inference="threshold")
    assert (np.asarray(jax.jit(budgeted_infer(back))(params, x, cap).steps_B) == 1).all()
    with pytest.raises(ValueError, match="with_halting changes only"):
        with_halting(graphdef, params, max_steps=3)
    with pytest.raises(ValueError, match="pondernet_inference cannot be 'coin'"):
        with_halting(graphdef, params, pondernet_inference="coin")
    for threshold in (-1.0, 0.0, 1.5):  # the config's rule: (0, 1]
        with pytest.raises(ValueError, match=r"'halting.pondernet_threshold' is .*; must be in \(0.0, 1.0\]"):
            with_halting(graphdef, params, pondernet_threshold=threshold)


def test_the_predictor_samples_like_the_inference_function(sampled):
    graphdef, params, infer = sampled
    params = with_halt_unit(params, 0.0, 0.0)
    x = inputs(16)
    predictor = BudgetedPredictor(graphdef, params, (N_IN,), CAP)
    _, steps = predictor(x, 4)
    np.testing.assert_array_equal(np.asarray(steps), np.asarray(infer(params, x, np.int32(4)).steps_B))
    assert np.asarray(steps).max() <= 4
