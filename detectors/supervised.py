"""With labelled anomalies: choose an operating threshold on the ROC or precision-recall curve, and
map raw scores to P(anomaly). Arrays in, plain JSON out (a bundle stores both; no pickle).

Thresholds follow the detectors' rule: an image is anomalous iff `score > threshold`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .calibration import check_scores
from .errors import InputError

RULES = ("fpr", "recall", "f1")
METHODS = ("isotonic", "logistic")


def _labelled(normal_scores, anomalous_scores) -> tuple[np.ndarray, np.ndarray]:
    normal = check_scores(normal_scores, name="normal scores")
    anomalous = check_scores(anomalous_scores, name="anomalous scores")
    if normal.size == 0 or anomalous.size == 0:
        msg = "need at least one normal and one anomalous score"
        raise InputError(msg)
    y = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
    return y, np.r_[normal, anomalous]


@dataclass(frozen=True)
class ThresholdChoice:
    """An operating point chosen on labelled scores, with what it achieves there and why."""

    rule: str  # fpr | recall | f1
    target: float | None  # the false-positive rate or recall asked for (None for f1)
    threshold: float  # anomalous iff score > threshold
    fpr: float  # measured on the labelled scores
    recall: float
    precision: float
    f1: float
    n_normal: int
    n_anomalous: int
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def _rates(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = s > threshold
    tp = float(np.sum(flagged & (y == 1)))
    fp = float(np.sum(flagged & (y == 0)))
    recall = tp / max(1.0, float(np.sum(y == 1)))
    precision = tp / (tp + fp) if tp + fp else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "fpr": fp / max(1.0, float(np.sum(y == 0))),
        "recall": recall,
        "precision": precision,
        "f1": f1,
    }


def _strictly_below(s: np.ndarray, at_least: float) -> float:
    """A threshold t with `s > t` iff `s >= at_least` on these scores: the midpoint to the next
    lower score (or, when none is lower, the float just below)."""
    if not math.isfinite(at_least):  # roc_curve's first point flags nothing
        return float(s.max())
    lower = s[s < at_least]
    if lower.size == 0:
        return float(np.nextafter(at_least, -np.inf))
    return float((lower.max() + at_least) / 2)


def choose_threshold(
    normal_scores, anomalous_scores, *, rule: str = "f1", target: float | None = None
) -> ThresholdChoice:
    """Choose `score > threshold` with scikit-learn's curves.

    fpr     the highest recall whose false-positive rate is <= target (ROC curve)
    recall  the lowest false-positive rate whose recall is >= target (ROC curve)
    f1      the highest F1 (precision-recall curve; depends on the share of anomalies given)
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    if rule not in RULES:
        msg = f"rule must be one of {RULES}, got {rule!r}"
        raise InputError(msg)
    if rule == "f1":
        target = None
    else:
        upper = 1.0 if rule == "recall" else math.nextafter(1.0, 0.0)
        try:
            target = float(target)
        except (TypeError, ValueError):
            target = math.nan
        if not 0.0 < target <= upper:
            bounds = "(0, 1]" if rule == "recall" else "(0, 1)"
            msg = f"rule {rule!r} needs a target in {bounds}"
            raise InputError(msg)
    y, s = _labelled(normal_scores, anomalous_scores)
    if rule == "f1":
        precision, recall, thresholds = precision_recall_curve(y, s)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        at_least = float(thresholds[int(np.argmax(f1[:-1]))])
    else:
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        if rule == "fpr":
            index = int(np.flatnonzero(fpr <= target)[-1])  # tpr grows along the curve
        else:
            index = int(np.flatnonzero(tpr >= target)[0])  # and so does fpr
        at_least = float(thresholds[index])
    threshold = _strictly_below(s, at_least)
    rates = _rates(y, s, threshold)
    n_normal, n_anomalous = int(np.sum(y == 0)), int(np.sum(y == 1))
    sizes = f"{n_normal} normal and {n_anomalous} anomalous scores"
    achieved = (
        f"false-positive rate {rates['fpr']:.4f}, recall {rates['recall']:.4f}, "
        f"precision {rates['precision']:.4f}, F1 {rates['f1']:.4f}"
    )
    reason = {
        "fpr": f"highest recall with a false-positive rate <= {target} on {sizes} (ROC curve)",
        "recall": f"lowest false-positive rate with recall >= {target} on {sizes} (ROC curve)",
        "f1": f"highest F1 on {sizes} (precision-recall curve; F1 depends on the share of "
        "anomalies in the labelled data)",
    }[rule] + f": {achieved}"
    return ThresholdChoice(
        rule,
        None if target is None else float(target),
        threshold,
        **rates,
        n_normal=n_normal,
        n_anomalous=n_anomalous,
        reason=reason,
    )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class ProbabilityMap:
    """Raw score -> P(anomaly), fitted on labelled scores; evaluated with numpy alone.

    isotonic  params {"x": [...], "y": [...]}: piecewise linear through the fitted steps, flat
              outside them (scikit-learn's IsotonicRegression with out_of_bounds="clip")
    logistic  params {"coef": a, "intercept": b}: 1 / (1 + exp(-(a * score + b)))

    Probabilities depend on the share of anomalies: `fitted_rate` is the share in the fitting data,
    `anomaly_rate` the share they are stated for (Bayes' rule moves the odds from one to the other).
    """

    method: str
    params: dict
    fitted_rate: float
    anomaly_rate: float
    n_normal: int
    n_anomalous: int

    def __call__(self, scores) -> np.ndarray:
        s = check_scores(scores)
        if self.method == "isotonic":
            p = np.interp(s, self.params["x"], self.params["y"])
        else:
            z = np.clip(self.params["coef"] * s + self.params["intercept"], -500, 500)
            p = 1.0 / (1.0 + np.exp(-z))
        p = np.clip(p, 0.0, 1.0)
        if self.anomaly_rate != self.fitted_rate:
            inner = (p > 0) & (p < 1)
            shift = _logit(np.float64(self.anomaly_rate)) - _logit(np.float64(self.fitted_rate))
            p[inner] = 1.0 / (1.0 + np.exp(-(_logit(p[inner]) + shift)))
        return p

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data) -> ProbabilityMap:
        """Rebuild from `to_json`; InputError when anything is missing or inconsistent."""
        try:
            made = cls(
                str(data["method"]),
                dict(data["params"]),
                float(data["fitted_rate"]),
                float(data["anomaly_rate"]),
                int(data["n_normal"]),
                int(data["n_anomalous"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            msg = f"probability map is malformed ({type(error).__name__}: {error})"
            raise InputError(msg) from None
        made._validate()
        return made

    def _validate(self) -> None:
        def fail(message: str):
            msg = f"probability map: {message}"
            raise InputError(msg)

        if self.method not in METHODS:
            fail(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("fitted_rate", "anomaly_rate"):
            if not 0.0 < getattr(self, name) < 1.0:
                fail(f"{name} must be in (0, 1)")
        if self.method == "isotonic":
            x = np.asarray(self.params.get("x", []), dtype=np.float64)
            y = np.asarray(self.params.get("y", []), dtype=np.float64)
            if x.ndim != 1 or x.size == 0 or x.shape != y.shape:
                fail("isotonic x and y must be equal-length non-empty lists")
            if not (np.all(np.isfinite(x)) and np.all(np.diff(x) >= 0)):
                fail("isotonic x must be finite and sorted")
            if not (np.all((y >= 0) & (y <= 1)) and np.all(np.diff(y) >= 0)):
                fail("isotonic y must be non-decreasing probabilities")
        else:
            values = [self.params.get("coef"), self.params.get("intercept")]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                fail("logistic coef and intercept must be finite numbers")


def fit_probability_map(
    normal_scores, anomalous_scores, *, method: str = "isotonic", anomaly_rate: float | None = None
) -> ProbabilityMap:
    """Fit P(anomaly | score) by isotonic or logistic regression on labelled raw scores."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}"
        raise InputError(msg)
    y, s = _labelled(normal_scores, anomalous_scores)
    fitted_rate = float(y.mean())
    rate = fitted_rate if anomaly_rate is None else float(anomaly_rate)
    if not 0.0 < rate < 1.0:
        msg = f"anomaly_rate must be in (0, 1), got {anomaly_rate!r}"
        raise InputError(msg)
    if method == "isotonic":
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        model.fit(s, y)
        params = {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
    else:
        # Fit on standardised scores (better conditioned), then fold the scaling into a, b.
        centre, scale = float(s.mean()), float(s.std()) or 1.0
        model = LogisticRegression(C=100.0).fit(((s - centre) / scale)[:, None], y)
        coef = float(model.coef_[0, 0]) / scale
        params = {"coef": coef, "intercept": float(model.intercept_[0]) - coef * centre}
    made = ProbabilityMap(
        method,
        params,
        fitted_rate,
        rate,
        n_normal=int(np.sum(y == 0)),
        n_anomalous=int(np.sum(y == 1)),
    )
    made._validate()
    return made
