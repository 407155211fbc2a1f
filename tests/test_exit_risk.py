"""Risk-controlled exit thresholds: a valid p-value, fixed-sequence testing, the guarantee."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.evaluation import exit_risk as E


def test_the_hoeffding_bentkus_p_value_is_valid_at_the_null_boundary():
    # losses whose mean is exactly delta (H0's boundary): P(p <= alpha) must not exceed alpha
    rng = np.random.default_rng(0)
    n, delta, alpha = 200, 0.1, 0.1
    p = [E.hoeffding_bentkus_p(float(rng.binomial(1, delta, n).mean()), n, delta) for _ in range(2000)]
    assert np.mean(np.asarray(p) <= alpha) <= alpha
    assert E.hoeffding_bentkus_p(0.2, 100, 0.1) == 1.0  # a mean above delta never rejects
    assert E.hoeffding_bentkus_p(0.0, 500, 0.1) < 1e-6  # no loss in many draws: strong evidence
    assert E.hoeffding_bentkus_p(0.05, 1000, 0.1) < E.hoeffding_bentkus_p(0.05, 100, 0.1)


def _scores(disagreement_K, windows=400, seed=0, depth=4):
    """Windows whose disagreement at threshold k is Bernoulli(disagreement_K[k]) per token (64 tokens)."""
    rng = np.random.default_rng(seed)
    thresholds = np.linspace(0.9, 0.1, len(disagreement_K)).astype(np.float32)
    agree = 1 - rng.binomial(64, disagreement_K, (windows, len(disagreement_K))) / 64
    blocks = np.broadcast_to(np.linspace(depth - 0.5, 1.0, len(disagreement_K)), agree.shape)
    return E.Agreement(thresholds, depth, agree, blocks)


def test_fixed_sequence_testing_takes_the_lowest_threshold_before_the_first_failure():
    # risk rises as the threshold falls, except a dip at the end that must not be taken
    scores = _scores(np.array([0.0, 0.01, 0.02, 0.05, 0.3, 0.01]))
    result = E.calibrate_threshold(scores, delta=0.1, epsilon=0.1)
    assert result.threshold == pytest.approx(float(scores.thresholds_K[3]))
    assert len(result.p_values) == 5 and result.p_values[-1] > 0.1 and max(result.p_values[:4]) <= 0.1
    assert result.risk < 0.1 and result.blocks == pytest.approx(scores.blocks_WxK[0, 3])
    none = E.calibrate_threshold(_scores(np.array([0.5, 0.6])), delta=0.1, epsilon=0.1)
    assert none.threshold == E.NO_EXITS and len(none.p_values) == 1
    with pytest.raises(ValueError, match="delta=0"):
        E.calibrate_threshold(scores, delta=0.0, epsilon=0.1)


def test_the_guarantee_holds_on_test_windows_in_at_least_one_minus_epsilon_of_draws():
    # a risk curve crossing delta = 0.05 between thresholds: the tight case for the guarantee
    risk = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.045, 0.05, 0.055, 0.07, 0.1])
    calibration, test = _scores(risk, windows=600, seed=1), _scores(risk, windows=2000, seed=2)
    result = E.guarantee_draws(calibration, test, delta=0.05, epsilon=0.1, windows=100, draws=300)
    assert result["held"] >= 0.9 and len(result["thresholds"]) == 300
    assert 1.0 <= result["test_blocks_mean"] < 4  # it certified thresholds that exit
    with pytest.raises(ValueError, match="700 calibration windows"):
        E.guarantee_draws(calibration, test, 0.05, 0.1, windows=700, draws=1)
