"""benchmarks/quality_report.py: the range the pooled false-positive count of exact conformal
p-values falls in, checked against simulated normal scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from benchmarks.quality_report import conformal_count_range
from detectors.calibration import conformal_p_values


def test_one_image_against_one_reference_is_flagged_with_probability_j_over_n_plus_1():
    expected, low, high = conformal_count_range([(1, 1199)], 0.001)  # j = floor(1.2) = 1
    assert expected == pytest.approx(1 / 1200)
    assert (low, high) == (0, 0)


def test_a_reference_too_small_for_alpha_never_flags():
    assert conformal_count_range([(500, 50)], 0.01) == (0.0, 0, 0)


def test_the_range_matches_simulated_units_that_share_a_reference_and_outgrows_the_binomial():
    units, alpha, repeats = [(300, 150)] * 4, 0.02, 4000
    rng = np.random.default_rng(0)
    counts = np.zeros(repeats, dtype=int)
    for i in range(repeats):
        for m, n in units:
            reference = np.sort(rng.random(n))
            counts[i] += np.sum(conformal_p_values(rng.random(m), reference) <= alpha)
    expected, low, high = conformal_count_range(units, alpha)
    assert counts.mean() == pytest.approx(expected, rel=0.03)
    inside = np.mean((counts >= low) & (counts <= high))
    assert 0.93 <= inside <= 0.98
    m = sum(size for size, _ in units)
    binomial = binom(m, expected / m)
    assert np.mean((counts >= binomial.ppf(0.025)) & (counts <= binomial.ppf(0.975))) < 0.85
