"""Conformal calibration on arrays: the identities, the FPR bound, BH and the drift test, in ms."""

import math

import numpy as np
import pytest

from detectors import InputError
from detectors.calibration import (
    alpha_for_threshold,
    benjamini_hochberg,
    check_alpha,
    conformal_p_values,
    conformal_threshold,
    min_reference_size,
    reference_from_scores,
)
from detectors.drift import DriftMonitor, ks_uniform


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("n", [19, 199, 999])
def test_false_positive_rate_is_at_most_alpha_over_many_seeds(alpha, n):
    # On exchangeable normal data the expected FPR is floor(alpha (n + 1)) / (n + 1) <= alpha.
    seeds, m = 400, 500
    rng = np.random.default_rng(n)
    fprs = np.empty(seeds)
    for seed in range(seeds):
        reference = reference_from_scores(rng.standard_normal(n))
        fprs[seed] = np.mean(conformal_p_values(rng.standard_normal(m), reference) <= alpha)
    expected = math.floor(alpha * (n + 1) + 1e-9) / (n + 1)
    assert expected <= alpha
    # Var(FPR) <= E(1 - E) (1/m + 1/(n + 2)): the beta-binomial law of the exceedances.
    standard_error = math.sqrt(expected * (1 - expected) * (1 / m + 1 / (n + 2)) / seeds)
    assert abs(fprs.mean() - expected) <= 4 * standard_error + 1e-12


def test_false_positive_rate_bound_holds_with_ties():
    # Integer scores tie often; counting ties as "at least as extreme" keeps the bound.
    rng = np.random.default_rng(1)
    fprs = [
        np.mean(
            conformal_p_values(
                rng.integers(0, 5, 400), reference_from_scores(rng.integers(0, 5, 99))
            )
            <= 0.1
        )
        for _ in range(300)
    ]
    assert np.mean(fprs) <= 0.1


def test_p_values_lie_in_0_1_and_hit_both_ends():
    rng = np.random.default_rng(2)
    reference = reference_from_scores(rng.standard_normal(50))
    scores = np.r_[rng.standard_normal(1000) * 3, -1e9, 1e9]
    p = conformal_p_values(scores, reference)
    assert np.all((p > 0) & (p <= 1))
    assert p[-2] == 1.0
    assert p[-1] == 1 / 51


@pytest.mark.parametrize("n", [1, 2, 10, 99, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.3, 0.5, 0.99])
def test_is_anomaly_iff_p_at_most_alpha_iff_score_above_threshold(n, alpha):
    rng = np.random.default_rng(n)
    reference = reference_from_scores(rng.integers(0, 20, n).astype(float))  # with ties
    scores = np.r_[rng.integers(-2, 23, 300).astype(float), reference]  # on reference points too
    threshold = conformal_threshold(reference, alpha)
    flagged = conformal_p_values(scores, reference) <= alpha
    np.testing.assert_array_equal(flagged, scores > threshold)
    if n < min_reference_size(alpha):
        assert threshold == math.inf


def test_benjamini_hochberg_matches_a_hand_computed_case():
    # sorted p: 0.005 0.01 0.03 0.04 0.5 -> p * 5 / rank: 0.025 0.025 0.05 0.05 0.5
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    np.testing.assert_allclose(benjamini_hochberg(p), [0.025, 0.05, 0.05, 0.025, 0.5])
    # step-up: 0.04 * 3 / 2 = 0.06 is lowered to 0.041 * 3 / 3 by the larger p-value's q
    np.testing.assert_allclose(benjamini_hochberg([0.041, 0.01, 0.04]), [0.041, 0.03, 0.041])
    np.testing.assert_allclose(benjamini_hochberg([0.9, 0.8]), [0.9, 0.9])
    assert benjamini_hochberg([1.0, 1.0, 1.0]).max() == 1.0


def test_alpha_for_threshold_flags_what_the_threshold_flags():
    rng = np.random.default_rng(3)
    reference = reference_from_scores(rng.standard_normal(200))
    scores = np.r_[rng.standard_normal(2000), reference]
    for threshold in reference[::7]:  # on the reference's grid: exactly the same images
        alpha = alpha_for_threshold(reference, threshold)
        np.testing.assert_array_equal(
            conformal_p_values(scores, reference) <= alpha, scores > threshold
        )
    for threshold in rng.standard_normal(20):  # off the grid: a superset, from the point below
        flagged = conformal_p_values(scores, reference) <= alpha_for_threshold(reference, threshold)
        assert np.all(flagged[scores > threshold])
        below = reference[reference <= threshold]
        extra = flagged & (scores <= threshold)
        assert not extra.any() or np.all(scores[extra] > below.max())
    assert 0 < alpha_for_threshold(reference, -1e9) < 1  # everything flagged: still a valid alpha


# --- edge cases: clear errors, never a silent wrong answer ---------------------------------------
@pytest.mark.parametrize(
    "alpha", [0, 1, -0.1, 1.5, float("nan"), float("inf"), "often", None, [0.1]]
)
def test_alpha_out_of_range_is_refused(alpha):
    with pytest.raises(InputError, match="alpha"):
        check_alpha(alpha)
    with pytest.raises(InputError):
        conformal_threshold(np.array([1.0, 2.0]), alpha)


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [float("inf")], [[1.0, 2.0], [3.0, 4.0]]])
def test_nan_infinite_or_misshapen_scores_are_refused(bad):
    reference = np.array([0.0, 1.0, 2.0])
    with pytest.raises(InputError):
        conformal_p_values(bad, reference)
    with pytest.raises(InputError):
        reference_from_scores(bad)


@pytest.mark.parametrize("bad", [[float("nan"), 0.5], [0.0, 0.5], [0.5, 1.2], [-0.1]])
def test_benjamini_hochberg_refuses_what_is_not_a_p_value(bad):
    with pytest.raises(InputError):
        benjamini_hochberg(bad)


def test_an_empty_reference_is_refused_and_an_empty_batch_is_empty():
    with pytest.raises(InputError, match="at least one"):
        reference_from_scores([])
    assert conformal_p_values([], np.array([1.0])).shape == (0,)


@pytest.mark.parametrize(
    ("reference", "score", "p"),
    [
        ([3.0], 3.0, 1.0),  # n = 1, a tie: as extreme as the reference
        ([3.0], 2.0, 1.0),
        ([3.0], 4.0, 0.5),  # n = 1: the smallest p-value there is
        ([1.0, 1.0, 1.0], 1.0, 1.0),  # all tied
        ([1.0, 1.0, 1.0], 1.5, 0.25),
        ([1.0, 2.0, 2.0, 3.0], 2.0, 0.8),  # ties count as at least as extreme
    ],
)
def test_ties_and_a_single_reference_score(reference, score, p):
    assert conformal_p_values([score], np.array(reference))[0] == pytest.approx(p)


def test_a_single_reference_score_can_only_flag_at_alpha_one_half():
    reference = np.array([3.0])
    assert conformal_threshold(reference, 0.5) == 3.0
    assert conformal_threshold(reference, 0.49) == math.inf
    assert min_reference_size(0.5) == 1
    assert min_reference_size(0.01) == 99


# --- drift ---------------------------------------------------------------------------------------
def _drift_p_values(seed, n, m, shift=0.0, reference_size=None):
    rng = np.random.default_rng(seed)
    reference = reference_from_scores(rng.standard_normal(n))
    p = conformal_p_values(rng.standard_normal(m) + shift, reference)
    return ks_uniform(p, reference_size=reference_size).p_value


def test_drift_p_value_is_calibrated_when_the_window_outgrows_the_reference():
    n, m = 200, 1000
    with_size = np.array([_drift_p_values(s, n, m, reference_size=n) for s in range(200)])
    without = np.array([_drift_p_values(s, n, m) for s in range(200)])
    assert 0.0 <= np.mean(with_size < 0.05) <= 0.1
    assert np.mean(without < 0.05) > 0.3  # why the reference size matters


def test_drift_is_detected_when_normal_moves():
    assert _drift_p_values(0, 500, 500, shift=0.5, reference_size=500) < 1e-4


def test_drift_monitor_waits_for_enough_p_values_then_reports():
    monitor = DriftMonitor(window=100, min_samples=20, reference_size=1000)
    monitor.update(np.linspace(0.01, 1, 10))
    assert monitor.status() is None
    monitor.update(np.full(200, 0.001))  # the window keeps the last 100: all tiny
    status = monitor.status()
    assert status.window == 100
    assert status.p_value < 1e-6


def test_ks_refuses_empty_and_nan():
    with pytest.raises(InputError):
        ks_uniform([])
    with pytest.raises(InputError):
        ks_uniform([0.5, float("nan")])
