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


def test_a_limit_spread_over_a_split_reads_from_its_whole_length(tmp_path):
    import numpy as np

    from adaptive import config as config_lib
    from adaptive.inference.scoring import split_batches
    from tests.helpers import ROOT

    cfg = config_lib.load(str(ROOT / "configs/parity.py:tiny"), [f"--config.data.data_dir={tmp_path}"])
    every = np.concatenate([b["x"][r] for b, r in split_batches(cfg, "validation", 8)])
    first = np.concatenate([b["x"][r] for b, r in split_batches(cfg, "validation", 8, 16)])
    spread = np.concatenate([b["x"][r] for b, r in split_batches(cfg, "validation", 8, 16, spread=True)])
    assert len(first) == len(spread) == 16 and len(every) > 32
    np.testing.assert_array_equal(first, every[:16])
    # every k-th batch: the second batch read lies past the first 16 examples, still in the split
    assert not np.array_equal(spread, first)
    assert all(any((row == other).all() for other in every) for row in spread)
