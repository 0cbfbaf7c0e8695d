"""torchloops.support.stats: intervals from scipy's bootstrap, and verdicts that never rank noise."""

from __future__ import annotations

import numpy as np
import pytest

from torchloops.support import stats


def test_median_interval_contains_the_median_and_is_reproducible():
    values = np.random.default_rng(1).normal(1.0, 0.05, 200)
    first, second = stats.median_interval(values), stats.median_interval(values)
    assert first == second  # seeded resampling
    assert first.low <= first.point <= first.high and first.high - first.low < 0.05


def test_too_few_samples_give_no_interval_and_no_ranking():
    estimate = stats.median_interval([1.0, 2.0])
    assert estimate.interval is None and stats.verdict(estimate) == stats.SAME
    assert stats.format_ratio(stats.paired_ratio([2.0, 2.0], [1.0, 1.0])) == "2.00x (no interval)"


@pytest.mark.parametrize("low,high,expected", [
    (0.97, 1.02, "same"),    # straddles 1
    (1.005, 1.025, "same"),  # wholly above 1 but inside the +-3 % band
    (1.04, 1.10, "slower"),
    (0.80, 0.90, "faster"),
    (0.96, 0.985, "same"),
])
def test_verdict(low, high, expected):
    assert stats.verdict(stats.Estimate((low + high) / 2, low, high, 50)) == expected


def test_format_ratio_prints_same_instead_of_a_number():
    assert stats.format_ratio(stats.Estimate(1.01, 0.99, 1.03, 50)) == "≈ same"
    assert stats.format_ratio(stats.Estimate(0.5, 0.48, 0.52, 50)) == "0.50x [0.48-0.52]"


def test_two_sample_ratio_of_separate_runs():
    rng = np.random.default_rng(2)
    base = rng.normal(1.0, 0.02, 100)
    estimate = stats.two_sample_ratio(base, 1.2 * rng.normal(1.0, 0.02, 100))
    assert estimate.low < 1.2 < estimate.high and stats.verdict(estimate) == stats.SLOWER


def test_paired_ratio_needs_equal_lengths():
    with pytest.raises(ValueError):
        stats.paired_ratio([1.0, 2.0], [1.0])

