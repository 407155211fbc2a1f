"""MSDNet budgeted batch classification: geometric exit plans and calibrated thresholds."""

import numpy as np
import pytest

from adaptive.evaluation import thresholds as T


@pytest.mark.parametrize("exits, target", [(4, 1.0), (4, 2.5), (6, 2.0), (6, 5.5), (10, 3.3)])
def test_geometric_plan_sums_to_one_and_has_the_target_mean(exits, target):
    q = T.geometric_exit_fractions(exits, target)
    assert q.sum() == pytest.approx(1.0) and (q >= 0).all()
    assert (q * np.arange(1, exits + 1)).sum() == pytest.approx(target, abs=1e-6)
    ratios = q[1:] / np.maximum(q[:-1], 1e-300)
    assert np.allclose(ratios[q[:-1] > 1e-12], ratios[0], rtol=1e-6)  # one common ratio: geometric


def test_out_of_range_targets_are_refused():
    with pytest.raises(ValueError, match=r"target mean exit 0.5 must be in \[1, 4\]"):
        T.geometric_exit_fractions(4, 0.5)


def test_calibration_hits_the_planned_exit_fractions_on_a_constructed_example():
    """1000 examples, 4 exits, distinct confidences: exactly round(q_t * 1000) leave at exit t,
    and they are the most confident of those still running."""
    rng = np.random.default_rng(0)
    conf = rng.permutation(4 * 1000).reshape(4, 1000) / 4000.0  # all distinct
    planned = np.array([0.4, 0.3, 0.2, 0.1])
    thresholds = T.calibrate(conf, planned)
    steps = T.exit_steps(conf, thresholds)
    assert np.bincount(steps - 1, minlength=4).tolist() == [400, 300, 200, 100]
    assert thresholds[-1] == -np.inf
    first = steps == 1  # the 400 most confident at exit 1 left there
    assert conf[0, first].min() > conf[0, ~first].max()
    second = steps == 2  # of the rest, the 300 most confident at exit 2
    running = ~first
    assert conf[1, second].min() > conf[1, running & ~second].max()


def test_an_exit_planned_empty_lets_nobody_out():
    conf = np.random.default_rng(1).random((3, 200))
    steps = T.exit_steps(conf, T.calibrate(conf, np.array([0.0, 0.5, 0.5])))
    assert np.bincount(steps - 1, minlength=3).tolist() == [0, 100, 100]
