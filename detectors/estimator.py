"""scikit-learn-style outlier detectors over raw scores (higher raw score = more anomalous).

They see one number per image, so they fit and predict in microseconds and are tested on arrays.
Sign conventions are scikit-learn's, as in IsolationForest and LocalOutlierFactor:

    score_samples(s)     = -s                               lower = more abnormal
    decision_function(s) = score_samples(s) - offset_        negative = anomaly
                         = threshold_ - s                   (offset_ = -threshold_)
    predict(s)           = -1 (anomaly) where decision_function(s) < 0, else +1

so `predict(s) == -1` iff `s > threshold_`; for ConformalDetector that is iff `p_value <= alpha`.
X is a 1-D array of raw scores or a (n, 1) column; NaN and infinity are refused (InputError).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from .calibration import (
    alpha_for_threshold,
    check_alpha,
    check_scores,
    conformal_p_values,
    conformal_threshold,
    reference_from_scores,
)
from .errors import InputError
from .supervised import ProbabilityMap, ThresholdChoice, choose_threshold, fit_probability_map


def as_scores(X, *, name: str = "scores") -> np.ndarray:
    """A 1-D float64 array from raw scores given as (n,) or (n, 1)."""
    array = np.asarray(X, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim > 1:
        msg = f"{name} must be (n,) or (n, 1): one raw score per image; got shape {array.shape}"
        raise InputError(msg)
    return check_scores(array, name=name)


class _ThresholdDetector(OutlierMixin, BaseEstimator):
    """The shared decision: anomalous iff score > threshold_ (fitted by subclasses)."""

    def score_samples(self, X) -> np.ndarray:
        """Negated raw scores: the lower, the more abnormal."""
        check_is_fitted(self)
        return -as_scores(X)

    def decision_function(self, X) -> np.ndarray:
        """threshold_ - score: negative for anomalies, zero on the threshold (normal)."""
        scores = self.score_samples(X)
        if self.offset_ is None:
            msg = "this detector was fitted with rule=None: it has no operating point"
            raise InputError(msg)
        return scores - self.offset_

    def predict(self, X) -> np.ndarray:
        """-1 for anomalies, +1 for normal images."""
        return np.where(self.decision_function(X) < 0, -1, 1)


class ConformalDetector(_ThresholdDetector):
    """Conformal p-values against reference scores of held-out normal images.

    fit(reference_scores) keeps the sorted reference; p = (1 + #{reference >= s}) / (n + 1), and a
    score is anomalous iff p <= alpha, so on exchangeable normal data P(anomaly) <= alpha.

    Fitted attributes: reference_ (sorted), n_reference_, alpha_, threshold_ (+inf when the
    reference is too small for any p-value to reach alpha), offset_ (= -threshold_).
    """

    def __init__(self, *, alpha: float = 0.01):
        self.alpha = alpha

    def fit(self, X, y=None) -> ConformalDetector:
        self.reference_ = reference_from_scores(as_scores(X, name="reference scores"))
        self.n_reference_ = int(self.reference_.size)
        self.alpha_ = check_alpha(self.alpha)
        self.threshold_ = conformal_threshold(self.reference_, self.alpha_)
        self.offset_ = -self.threshold_
        return self

    def p_values(self, X) -> np.ndarray:
        """Conformal p-values in (0, 1]: the smaller, the more anomalous."""
        check_is_fitted(self)
        return conformal_p_values(as_scores(X), self.reference_)


class LabelledThresholdDetector(_ThresholdDetector):
    """A threshold chosen with labelled anomalies, and optionally a map to P(anomaly).

    fit(X, y) with y = 1 for anomalies and 0 for normal images. `rule` is "fpr" (highest recall
    with false-positive rate <= target), "recall" (lowest false-positive rate with recall >=
    target), "f1" (highest F1) or None (no operating point: only the map); `probability` is
    "isotonic", "logistic" or None.

    Fitted attributes: choice_ (ThresholdChoice: threshold, rates, reason; None without a rule),
    threshold_, offset_ (None without a rule), probability_map_ (ProbabilityMap or None).
    """

    def __init__(
        self,
        *,
        rule: str | None = "f1",
        target: float | None = None,
        probability: str | None = "isotonic",
        anomaly_rate: float | None = None,
    ):
        self.rule = rule
        self.target = target
        self.probability = probability
        self.anomaly_rate = anomaly_rate

    def fit(self, X, y) -> LabelledThresholdDetector:
        scores = as_scores(X)
        labels = np.asarray(y)
        if labels.shape != scores.shape or not np.all(np.isin(labels, (0, 1))):
            msg = f"y must hold one 0 (normal) or 1 (anomaly) per score; got shape {labels.shape}"
            raise InputError(msg)
        if self.rule is None and self.probability is None:
            msg = "nothing to fit: give a rule for the operating point, a probability map or both"
            raise InputError(msg)
        normal, anomalous = scores[labels == 0], scores[labels == 1]
        self.choice_: ThresholdChoice | None = None
        self.threshold_ = self.offset_ = None
        if self.rule is not None:
            self.choice_ = choose_threshold(normal, anomalous, rule=self.rule, target=self.target)
            self.threshold_ = self.choice_.threshold
            self.offset_ = -self.threshold_
        self.probability_map_ = (
            None
            if self.probability is None
            else fit_probability_map(
                normal, anomalous, method=self.probability, anomaly_rate=self.anomaly_rate
            )
        )
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2): P(normal), P(anomaly) per score, from the fitted map."""
        check_is_fitted(self)
        if self.probability_map_ is None:
            msg = "this detector was fitted with probability=None"
            raise InputError(msg)
        p = self.probability_map_(as_scores(X))
        return np.column_stack([1.0 - p, p])

    def conformal_alpha(self, reference_scores) -> float:
        """The alpha whose conformal rule `p <= alpha` flags the same scores as `s > threshold_`
        against this reference (up to the reference's grid)."""
        check_is_fitted(self)
        if self.threshold_ is None:
            msg = "this detector was fitted with rule=None: it has no threshold to match"
            raise InputError(msg)
        return alpha_for_threshold(
            reference_from_scores(as_scores(reference_scores)), self.threshold_
        )


__all__ = ["ConformalDetector", "LabelledThresholdDetector", "ProbabilityMap", "as_scores"]
