"""scikit-learn-style detectors over raw scores, threshold choice and P(anomaly) maps, on arrays."""

import json

import numpy as np
import pytest
from sklearn.base import clone

from detectors import InputError, NotFittedError
from detectors.calibration import conformal_p_values
from detectors.estimator import ConformalDetector, LabelledThresholdDetector
from detectors.supervised import ProbabilityMap, choose_threshold, fit_probability_map


@pytest.fixture
def labelled():
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, 400), rng.normal(2, 1, 150)


def test_init_only_stores_keyword_parameters():
    detector = ConformalDetector(alpha=0.2)
    assert detector.get_params() == {"alpha": 0.2}
    assert clone(detector).get_params() == {"alpha": 0.2}
    assert not [k for k in vars(detector) if k.endswith("_")]
    with pytest.raises(TypeError):
        ConformalDetector(0.2)
    ConformalDetector(alpha=7)  # validated by fit, not by __init__


@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict", "p_values"])
def test_conformal_detector_is_not_fitted_before_fit(method):
    with pytest.raises(NotFittedError):
        getattr(ConformalDetector(), method)([1.0, 2.0])


@pytest.mark.parametrize(
    "method", ["score_samples", "decision_function", "predict", "predict_proba", "conformal_alpha"]
)
def test_labelled_detector_is_not_fitted_before_fit(method):
    with pytest.raises(NotFittedError):
        getattr(LabelledThresholdDetector(), method)([1.0, 2.0])


def test_sign_conventions_follow_scikit_learn_outlier_detectors():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal(99)
    detector = ConformalDetector(alpha=0.1).fit(reference)
    scores = np.r_[rng.standard_normal(500) * 2, detector.threshold_]
    np.testing.assert_array_equal(detector.score_samples(scores), -scores)
    np.testing.assert_allclose(detector.decision_function(scores), detector.threshold_ - scores)
    predicted = detector.predict(scores)
    assert set(np.unique(predicted)) == {-1, 1}
    p = conformal_p_values(scores, np.sort(reference))
    np.testing.assert_array_equal(predicted == -1, p <= 0.1)
    np.testing.assert_array_equal(predicted == -1, detector.decision_function(scores) < 0)
    assert predicted[-1] == 1  # exactly on the threshold is normal
    np.testing.assert_array_equal(detector.p_values(scores), p)


def test_fitted_attributes():
    detector = ConformalDetector(alpha=0.05).fit(np.array([[3.0], [1.0], [2.0]]))  # (n, 1) too
    np.testing.assert_array_equal(detector.reference_, [1.0, 2.0, 3.0])
    assert detector.n_reference_ == 3
    assert detector.alpha_ == 0.05
    assert detector.threshold_ == np.inf
    assert detector.offset_ == -np.inf
    assert np.all(detector.predict([1e9]) == 1)
    assert detector.fit_predict([1.0, 2.0, 3.0]).tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    ("params", "X"),
    [
        ({"alpha": 0.0}, [1.0, 2.0]),
        ({"alpha": 1.2}, [1.0, 2.0]),
        ({"alpha": 0.1}, [1.0, float("nan")]),
        ({"alpha": 0.1}, []),
        ({"alpha": 0.1}, [[1.0, 2.0], [3.0, 4.0]]),
    ],
)
def test_bad_fits_are_clear_errors(params, X):
    with pytest.raises(InputError):
        ConformalDetector(**params).fit(X)


def test_nan_scores_are_refused_after_fit():
    detector = ConformalDetector(alpha=0.1).fit(np.arange(50.0))
    for method in (detector.predict, detector.decision_function, detector.p_values):
        with pytest.raises(InputError):
            method([1.0, float("nan")])


def _flag_rates(normal, anomalous, threshold):
    fpr = np.mean(normal > threshold)
    recall = np.mean(anomalous > threshold)
    tp, fp = np.sum(anomalous > threshold), np.sum(normal > threshold)
    precision = tp / (tp + fp) if tp + fp else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return fpr, recall, f1


def _candidates(normal, anomalous):
    # Every distinct decision on these scores: thresholds just below each score, and above all.
    s = np.unique(np.r_[normal, anomalous])
    return np.r_[s[0] - 1, (s[:-1] + s[1:]) / 2, s[-1]]


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_target_fpr_gives_the_best_recall_within_it(labelled, target):
    normal, anomalous = labelled
    choice = choose_threshold(normal, anomalous, rule="fpr", target=target)
    fpr, recall, _ = _flag_rates(normal, anomalous, choice.threshold)
    assert fpr <= target
    assert (choice.fpr, choice.recall) == (fpr, recall)
    best = max(
        _flag_rates(normal, anomalous, t)[1]
        for t in _candidates(normal, anomalous)
        if _flag_rates(normal, anomalous, t)[0] <= target
    )
    assert recall == best


@pytest.mark.parametrize("target", [0.5, 0.9, 1.0])
def test_target_recall_gives_the_lowest_fpr_reaching_it(labelled, target):
    normal, anomalous = labelled
    choice = choose_threshold(normal, anomalous, rule="recall", target=target)
    fpr, recall, _ = _flag_rates(normal, anomalous, choice.threshold)
    assert recall >= target
    best = min(
        _flag_rates(normal, anomalous, t)[0]
        for t in _candidates(normal, anomalous)
        if _flag_rates(normal, anomalous, t)[1] >= target
    )
    assert fpr == best


def test_best_f1_is_the_best_over_every_threshold(labelled):
    normal, anomalous = labelled
    choice = choose_threshold(normal, anomalous, rule="f1")
    best = max(_flag_rates(normal, anomalous, t)[2] for t in _candidates(normal, anomalous))
    assert choice.f1 == pytest.approx(best)
    assert choice.target is None
    assert "F1" in choice.reason
    assert choice.n_normal == 400
    assert choice.n_anomalous == 150
    assert json.loads(json.dumps(choice.to_json()))["threshold"] == choice.threshold


@pytest.mark.parametrize(
    ("rule", "target"),
    [
        ("fpr", None),
        ("fpr", 1.0),
        ("recall", 0.0),
        ("recall", 1.5),
        ("precision", 0.5),
        ("fpr", "x"),
    ],
)
def test_bad_rules_and_targets_are_refused(labelled, rule, target):
    with pytest.raises(InputError):
        choose_threshold(*labelled, rule=rule, target=target)


def test_a_choice_needs_both_kinds_of_scores():
    with pytest.raises(InputError, match="normal and one anomalous"):
        choose_threshold([1.0, 2.0], [], rule="f1")


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_probability_maps_are_monotone_probabilities_that_survive_json(labelled, method):
    normal, anomalous = labelled
    fitted = fit_probability_map(normal, anomalous, method=method)
    grid = np.linspace(-6, 8, 500)
    p = fitted(grid)
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p) >= -1e-12)
    assert p[0] < 0.05
    assert p[-1] > 0.95
    again = ProbabilityMap.from_json(json.loads(json.dumps(fitted.to_json())))
    np.testing.assert_array_equal(again(grid), p)
    assert fitted.fitted_rate == pytest.approx(150 / 550)


def test_isotonic_map_matches_scikit_learn(labelled):
    from sklearn.isotonic import IsotonicRegression

    normal, anomalous = labelled
    s, y = np.r_[normal, anomalous], np.r_[np.zeros(400), np.ones(150)]
    expected = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(s, y)
    grid = np.linspace(-6, 8, 300)
    np.testing.assert_allclose(fit_probability_map(normal, anomalous)(grid), expected.predict(grid))


def test_probabilities_follow_the_stated_anomaly_rate(labelled):
    normal, anomalous = labelled
    as_fitted = fit_probability_map(normal, anomalous, method="logistic")
    rare = fit_probability_map(normal, anomalous, method="logistic", anomaly_rate=0.01)
    grid = np.linspace(-2, 4, 50)
    assert np.all(rare(grid) < as_fitted(grid))
    odds = lambda p: p / (1 - p)  # noqa: E731
    ratio = odds(rare(grid)) / odds(as_fitted(grid))  # Bayes: the odds scale by the prior odds
    np.testing.assert_allclose(ratio, odds(0.01) / odds(150 / 550), rtol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {
            "method": "spline",
            "params": {},
            "fitted_rate": 0.5,
            "anomaly_rate": 0.5,
            "n_normal": 1,
            "n_anomalous": 1,
        },
        {
            "method": "isotonic",
            "params": {"x": [1, 0], "y": [0, 1]},
            "fitted_rate": 0.5,
            "anomaly_rate": 0.5,
            "n_normal": 1,
            "n_anomalous": 1,
        },
        {
            "method": "isotonic",
            "params": {"x": [0, 1], "y": [0.9, 0.1]},
            "fitted_rate": 0.5,
            "anomaly_rate": 0.5,
            "n_normal": 1,
            "n_anomalous": 1,
        },
        {
            "method": "logistic",
            "params": {"coef": "a", "intercept": 0},
            "fitted_rate": 0.5,
            "anomaly_rate": 0.5,
            "n_normal": 1,
            "n_anomalous": 1,
        },
        {
            "method": "logistic",
            "params": {"coef": 1, "intercept": 0},
            "fitted_rate": 0.5,
            "anomaly_rate": 1.0,
            "n_normal": 1,
            "n_anomalous": 1,
        },
    ],
)
def test_malformed_probability_maps_are_refused(bad):
    with pytest.raises(InputError, match="probability map"):
        ProbabilityMap.from_json(bad)


def test_labelled_detector_fits_threshold_and_probabilities(labelled):
    normal, anomalous = labelled
    X = np.r_[normal, anomalous]
    y = np.r_[np.zeros(400, int), np.ones(150, int)]
    detector = LabelledThresholdDetector(rule="fpr", target=0.05).fit(X, y)
    assert detector.choice_.fpr <= 0.05
    np.testing.assert_array_equal(detector.predict(X) == -1, X > detector.threshold_)
    proba = detector.predict_proba(X)
    assert proba.shape == (550, 2)
    assert np.allclose(proba.sum(1), 1)
    alpha = detector.conformal_alpha(normal)
    p = conformal_p_values(X, np.sort(normal))
    np.testing.assert_array_equal(p <= alpha, X > detector.threshold_)  # the same decision
    with pytest.raises(InputError):
        LabelledThresholdDetector().fit(X, y[:-1])
    with pytest.raises(InputError):
        LabelledThresholdDetector(probability=None).fit(X, y).predict_proba(X)
