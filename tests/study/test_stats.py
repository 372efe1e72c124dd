"""The study's statistics: Student-t intervals over seeds, and Wilson's interval for an accuracy on n images."""

import math

import pytest

from visattn.study.stats import mean_std, paired_difference, t_quantile_975, wilson_interval


def test_t_quantiles_match_the_table_and_approach_the_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert t_quantile_975(31) < 2.042 and abs(t_quantile_975(120) - 1.980) < 2e-3  # tables give 1.980
    assert abs(t_quantile_975(10_000) - 1.96) < 1e-3
    with pytest.raises(ValueError, match="df must be >= 1"):
        t_quantile_975(0)


def test_mean_std_is_the_sample_std():
    mean, std = mean_std([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and std == pytest.approx(0.02)
    assert math.isnan(mean_std([0.5])[1]) and all(math.isnan(v) for v in mean_std([]))


def test_paired_difference_by_hand():
    base = {0: 0.900, 1: 0.910, 2: 0.905, 7: 0.5}  # seed 7 has no partner: left out
    block = {0: 0.910, 1: 0.918, 2: 0.917}
    diffs = [0.010, 0.008, 0.012]
    d = paired_difference(block, base)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert d.pairs == 3 and d.mean == pytest.approx(mean)
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert not d.includes_zero and d.verdict == "better"
    noisy = paired_difference({0: 0.91, 1: 0.89}, {0: 0.90, 1: 0.90})
    assert noisy.includes_zero and "includes 0" in noisy.verdict
    one = paired_difference({0: 0.91}, {0: 0.90})
    assert one.pairs == 1 and one.low == -math.inf and one.verdict == "too few seeds"


def test_wilson_interval_matches_the_textbook_and_is_symmetric():
    low, high = wilson_interval(8, 10)  # 0.490-0.943 in the tables
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    all_right = wilson_interval(20, 20)  # no zero-width interval at 100 %: its low end is n / (n + z^2)
    assert all_right == (pytest.approx(20 / (20 + 1.959964**2)), 1.0)
    none_right = wilson_interval(0, 20)
    assert none_right == (0.0, pytest.approx(1 - all_right[0]))
    for k in (3, 11):
        assert wilson_interval(k, 20) == pytest.approx(tuple(1 - v for v in reversed(wilson_interval(20 - k, 20))))
    with pytest.raises(ValueError, match="successes=21, n=20"):
        wilson_interval(21, 20)
