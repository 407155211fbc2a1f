"""95% intervals over seeds (adaptive/evaluation/intervals.py) against values computed by hand."""

import math

import pytest

from adaptive.evaluation.intervals import difference, mean_interval, paired_difference, welch_difference

T_975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 30: 2.042272456}  # Student t tables


def test_mean_interval_is_students_t_over_seeds():
    iv = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    half = T_975[2] * 1.0 / math.sqrt(3)
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.low == pytest.approx(2.0 - half) and iv.high == pytest.approx(2.0 + half)
    assert iv.half_width == pytest.approx(half) and "t over 3 seeds" in iv.text()
    two = mean_interval([0.5, 0.7])  # df 1: sd sqrt(0.02), half = t * sd / sqrt(2) = t * 0.1
    assert two.high - two.mean == pytest.approx(T_975[1] * 0.1)
    assert mean_interval([0.9] * 5).low == pytest.approx(0.9)  # no spread, no width


def test_one_seed_has_no_interval_and_says_so():
    iv = mean_interval([0.51])
    assert (iv.mean, iv.low, iv.high, iv.n) == (0.51, None, None, 1)
    assert iv.text() == "0.51, interval: n/a (1 seed)"


def test_paired_difference_removes_noise_shared_by_seed():
    a, b = {0: 0.90, 1: 0.70, 2: 0.80}, {0: 0.85, 1: 0.65, 2: 0.75}  # seeds differ a lot, pairs by 0.05
    iv = paired_difference(a, b)
    assert iv.mean == pytest.approx(0.05) and iv.low == pytest.approx(0.05) and "paired" in iv.rule
    unpaired = welch_difference(list(a.values()), list(b.values()))
    assert unpaired.mean == pytest.approx(0.05) and unpaired.low < 0  # the seed noise hides it unpaired
    assert difference(a, b).rule == iv.rule  # same seeds: paired
    assert "Welch" in difference(a, {5: 0.8, 6: 0.7, 7: 0.6}).rule  # different seeds: Welch


def test_welch_interval_matches_the_formula():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0]  # var 2.5 / 5 = 0.5 and 4 / 3
    sx, sy = 0.5, 4 / 3
    df = (sx + sy) ** 2 / (sx**2 / 4 + sy**2 / 2)
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(sx + sy)
    iv = welch_difference(x, y)
    assert iv.mean == pytest.approx(-1.0) and iv.high == pytest.approx(-1.0 + half)


def test_bad_input_is_a_one_line_error():
    with pytest.raises(ValueError, match="no values for the mean"):
        mean_interval([])
    with pytest.raises(ValueError, match="non-finite value"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_t_quantiles_match_the_table():
    for df, q in T_975.items():
        values = [0.0, 1.0] + [0.5] * (df - 1)  # df + 1 values
        iv = mean_interval(values)
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / df)
        assert iv.half_width == pytest.approx(q * sd / math.sqrt(df + 1), rel=1e-6)
