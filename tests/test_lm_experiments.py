"""The language-model experiments' choices: a threshold chosen on validation only, by the rule."""

from adaptive.experiments.early_exit_lm import TOLERANCE, choose


def _point(confidence, threshold, bits, flops):
    return {"confidence": confidence, "threshold": threshold, "bits_per_byte": bits, "flops_per_token": flops}


def test_the_cheapest_threshold_within_the_tolerance_is_chosen_per_measure():
    full = _point(None, None, 2.0, 100.0)
    points = [
        full,
        _point("max_prob", 0.5, 2.0 * (1 + TOLERANCE) + 0.01, 40.0),  # cheapest, but over the tolerance
        _point("max_prob", 0.8, 2.05, 60.0),
        _point("max_prob", 0.9, 2.01, 80.0),
        _point("margin", 0.5, 2.5, 50.0),
        _point("margin", 0.9, 2.3, 70.0),
    ]
    assert choose(points, "max_prob") == (points[2], True)
    # no threshold of the measure is within the tolerance: its most conservative one, flagged
    assert choose(points, "margin") == (points[5], False)
