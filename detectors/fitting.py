"""Fit a bundle's calibration on held-out normal images: the reference of every score and the
per-pixel statistics that turn heat maps into z-scores; with labelled anomalies, the operating
point and maps to P(anomaly). Runs the graph; never touches its weights.

The calibration math is the estimators' (estimator.py): a ConformalDetector per score keeps its
reference, a LabelledThresholdDetector chooses the operating point and fits P(anomaly).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, conformal_threshold
from .detector import Detector
from .errors import InputError
from .estimator import ConformalDetector, LabelledThresholdDetector
from .spec import BundleSpec


def with_reference(
    spec: BundleSpec,
    scores: dict[str, np.ndarray],
    *,
    moments: np.ndarray | None = None,
    alpha: float | None = None,
    source: str | None = None,
) -> BundleSpec:
    """`spec` with references from the given scores of held-out normal images (one array per
    score the bundle offers) and heat-map statistics from `moments` (the maps' per-pixel sum and
    sum of squares over the same images, see calibration.map_moments). Arrays in, a spec out."""
    missing = set(spec.scores) - set(scores)
    if missing:
        msg = f"no calibration scores for {sorted(missing)}"
        raise InputError(msg)
    sizes = {len(np.atleast_1d(scores[name])) for name in spec.scores}
    if len(sizes) != 1:
        msg = f"calibration scores of different lengths {sorted(sizes)}"
        raise InputError(msg)
    n = sizes.pop()
    alpha = check_alpha(spec.calibration.alpha if alpha is None else alpha)
    references = {}
    for name in spec.scores:
        try:
            conformal = ConformalDetector(alpha=alpha).fit(scores[name])
        except InputError as error:
            msg = f"score {name!r} on the calibration images: {error}"
            raise InputError(msg) from None
        references[name] = tuple(conformal.reference_.tolist())
    heatmap = spec.heatmap
    if moments is not None and heatmap is not None:
        mean = moments[0] / n
        std = np.sqrt(np.maximum(moments[1] / n - mean**2, 0.0))
        heatmap = replace(
            heatmap,
            mean=tuple(mean.ravel().round(5).tolist()),
            std=tuple(std.ravel().round(5).tolist()),
        )
    calibration = replace(
        spec.calibration,
        alpha=alpha,
        n_reference=n,
        data=spec.calibration.data if source is None else source,
    )
    return replace(
        spec,
        scores={name: replace(s, reference=references[name]) for name, s in spec.scores.items()},
        heatmap=heatmap,
        calibration=calibration,
    )


def calibrated_spec(
    bundle: Bundle,
    images,
    *,
    labels=None,
    alpha: float | None = None,
    source: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> BundleSpec:
    """The bundle's metadata with references recomputed on `images` (normal, never seen in
    training). A conditional bundle needs their true `labels`: the reference is then the scores of
    normal images given their own class, pooled over classes."""
    spec, _ = recalibrate(
        bundle,
        images,
        labels=labels,
        alpha=alpha,
        source=source,
        batch_size=batch_size,
        device=device,
    )
    return spec


def recalibrate(
    bundle: Bundle,
    normal,
    *,
    labels=None,
    anomalous_labels=None,
    alpha: float | None = None,
    anomalous=None,
    rule: str | None = None,
    target: float | None = None,
    probability: str | None = "isotonic",
    anomaly_rate: float | None = None,
    score: str | None = None,
    source: str | None = None,
    anomalous_source: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> tuple[BundleSpec, dict]:
    """New metadata for `bundle` (the graph is untouched) and a summary of what changed.

    The references are recomputed on `normal`, held-out normal images. With `anomalous` images:
    `rule` ("fpr", "recall" or "f1", see supervised.choose_threshold) chooses the operating point
    for `score` (default: the bundle's default score), stored as the conformal alpha that flags the
    same scores, with the reasons; `probability` ("isotonic", "logistic" or None) fits a map to
    P(anomaly) for every score. Maps and choices of an earlier calibration are dropped, since
    they described the old data. A conditional bundle scores the images with their `labels` and
    `anomalous_labels`.
    """
    if rule is not None and alpha is not None:
        msg = "give either alpha or a rule for choosing it from labelled anomalies, not both"
        raise InputError(msg)
    if rule is not None and anomalous is None:
        msg = f"rule {rule!r} needs labelled anomalous images"
        raise InputError(msg)
    score = bundle.spec.score_name(score)
    detector = Detector(bundle, device=device, raw_only=True)
    # Everything is checked before the first image is scored.
    normal = detector.check_images(normal)
    labels = detector.check_labels(labels, len(normal))
    if anomalous is not None:
        anomalous = detector.check_images(anomalous)
        anomalous_labels = detector.check_labels(anomalous_labels, len(anomalous))
    normal_scores, moments = detector.raw_scores_batched(
        normal, labels=labels, batch_size=batch_size, with_moments=True
    )
    spec = with_reference(bundle.spec, normal_scores, moments=moments, alpha=alpha, source=source)
    scores = {name: replace(s, probability=None) for name, s in spec.scores.items()}
    calibration = replace(spec.calibration, choice=None)
    summary: dict = {"n_reference": len(normal), "choice": None, "probability": None}
    if anomalous is not None:
        anomalous_scores, _ = detector.raw_scores_batched(
            anomalous, labels=anomalous_labels, batch_size=batch_size
        )
        y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
        for name in scores:
            # The chosen score's estimator also picks the operating point; each maps P(anomaly).
            name_rule = rule if name == score else None
            if name_rule is None and probability is None:
                continue
            fitted = LabelledThresholdDetector(
                rule=name_rule, target=target, probability=probability, anomaly_rate=anomaly_rate
            ).fit(np.r_[normal_scores[name], anomalous_scores[name]], y)
            if name_rule is not None:
                chosen = fitted.conformal_alpha(np.asarray(scores[name].reference))
                calibration = replace(
                    calibration,
                    alpha=chosen,
                    choice={
                        "score": name,
                        **fitted.choice_.to_json(),
                        "alpha": chosen,
                        "normal_data": source,
                        "anomalous_data": anomalous_source,
                        "note": "rates measured on the calibration images themselves (in-sample)",
                    },
                )
                summary["choice"] = calibration.choice
            if probability is not None:
                scores[name] = replace(scores[name], probability=fitted.probability_map_)
        summary["probability"] = probability
    spec = replace(spec, scores=scores, calibration=calibration)
    summary["alpha"] = calibration.alpha
    summary["thresholds"] = {
        name: conformal_threshold(np.asarray(s.reference), calibration.alpha)
        for name, s in scores.items()
    }
    return spec, summary
