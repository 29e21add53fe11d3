"""Fit a bundle's calibration on held-out normal images: the reference of every score and the
per-pixel statistics that turn heat maps into z-scores; with labelled anomalies, the operating
point and maps to P(anomaly). Runs the graph; never touches its weights.

The calibration math is the estimators' (estimator.py): a ConformalDetector per score keeps its
reference, a LabelledThresholdDetector chooses the operating point and fits P(anomaly).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, conformal_threshold
from .combination import calibration_halves, combine
from .detector import Detector
from .errors import InputError
from .estimator import ConformalDetector, LabelledThresholdDetector
from .spec import BundleSpec


def with_reference(
    spec: BundleSpec,
    scores: dict[str, np.ndarray],
    *,
    member_scores: dict[str, np.ndarray] | None = None,
    moments: np.ndarray | None = None,
    alpha: float | None = None,
    source: str | None = None,
) -> BundleSpec:
    """`spec` with references from the given scores of held-out normal images (one array per
    score computed from the graph) and heat-map statistics from `moments` (the maps' per-pixel sum
    and sum of squares over the same images, see calibration.map_moments). Arrays in, a spec out.

    Every score computed from the graph keeps all the images' scores as its reference. A combined
    score of several members needs its members' references *inside the combination* from normal
    images that its own reference does not hold, so that its statistic is a fixed function of the
    images it is referenced against:
    - `member_scores` (the graph scores of another held-out normal split; the validation split,
      when training): the members' references inside the combination come from them, and the
      combined score's own reference is its statistic on every image;
    - without them, the images are split in two halves (combination.calibration_halves): the
      first for the members inside the combination, the second for the combined reference.
    A combined score of one member needs neither: its statistic is a decreasing function of the
    member's p-value, and with both references on all n images its p-value is the member's own
    against all n (combination.py)."""
    n = _check_lengths(spec, scores, "calibration")
    alpha = check_alpha(spec.calibration.alpha if alpha is None else alpha)
    scores = {name: np.atleast_1d(scores[name]) for name in spec.graph_scores}
    references = {name: _reference(name, scores[name], alpha) for name in scores}
    calibrated = _with_references(spec, references)
    for name, score in spec.scores.items():
        if name in spec.graph_scores:
            continue
        if len(score.statistics) == 1:
            member_references, rest = {}, scores
        elif member_scores is not None:
            _check_lengths(spec, member_scores, "member reference")
            member_references = {
                m: _reference(m, np.atleast_1d(member_scores[m]), alpha) for m in score.statistics
            }
            rest = scores
        else:
            first, second = calibration_halves(n)
            member_references = {
                m: _reference(m, scores[m][first], alpha) for m in score.statistics
            }
            rest = {m: scores[m][second] for m in score.statistics}
        combined = replace(score, member_references=member_references)
        statistic = combine(
            score.rule,
            {m: rest[m] for m in score.statistics},
            combined.references(calibrated.scores),
        )
        references[name] = _reference(name, statistic, alpha)
        calibrated = replace(calibrated, scores={**calibrated.scores, name: combined})
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
        calibrated,
        scores=_with_references(calibrated, references).scores,
        heatmap=heatmap,
        calibration=calibration,
    )


def _check_lengths(spec: BundleSpec, scores: dict[str, np.ndarray], what: str) -> int:
    """The number of images `scores` (one array per graph score) were computed on."""
    missing = set(spec.graph_scores) - set(scores)
    if missing:
        msg = f"no {what} scores for {sorted(missing)}"
        raise InputError(msg)
    sizes = {len(np.atleast_1d(scores[name])) for name in spec.graph_scores}
    if len(sizes) != 1:
        msg = f"{what} scores of different lengths {sorted(sizes)}"
        raise InputError(msg)
    return sizes.pop()


def _reference(name: str, scores: np.ndarray, alpha: float) -> tuple[float, ...]:
    try:
        return tuple(ConformalDetector(alpha=alpha).fit(scores).reference_.tolist())
    except InputError as error:
        msg = f"score {name!r} on the calibration images: {error}"
        raise InputError(msg) from None


def _with_references(spec: BundleSpec, references: dict[str, tuple]) -> BundleSpec:
    scores = {
        name: replace(s, reference=references.get(name, ())) for name, s in spec.scores.items()
    }
    return replace(spec, scores=scores)


def combined_scores(spec: BundleSpec, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`scores` (raw, one array per graph score) and the combined scores computed from them with
    the members' references in `spec`."""
    out = dict(scores)
    for name in spec.scores:
        if name not in spec.graph_scores:
            members = spec.scores[name].statistics
            out[name] = combine(
                spec.scores[name].rule,
                {m: scores[m] for m in members},
                spec.scores[name].references(spec.scores),
            )
    return out


def calibrated_spec(
    bundle: Bundle,
    images,
    *,
    labels=None,
    members=None,
    member_labels=None,
    alpha: float | None = None,
    source: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> BundleSpec:
    """The bundle's metadata with references recomputed on `images` (normal, never seen in
    training) and, when given, the combined score's members' references on `members` (other
    held-out normal images, see with_reference). A conditional bundle needs their true `labels`
    (`member_labels`): the reference is then the scores of normal images given their own class,
    pooled over classes."""
    spec, _ = recalibrate(
        bundle,
        images,
        labels=labels,
        members=members,
        member_labels=member_labels,
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
    members=None,
    member_labels=None,
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

    The references are recomputed on `normal`, held-out normal images; the combined score's
    members' references inside the combination on `members`, other held-out normal images, when
    given, else on half of `normal` (with_reference). With `anomalous` images:
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
    if members is not None:
        members = detector.check_images(members)
        member_labels = detector.check_labels(member_labels, len(members))
    # The graph's scores only: the combined ones are computed below with the new references.
    graph_scores = bundle.spec.graph_scores
    normal_scores, moments = detector.raw_scores_batched(
        normal, graph_scores, labels=labels, batch_size=batch_size, with_moments=True
    )
    member_scores = None
    if members is not None:
        member_scores, _ = detector.raw_scores_batched(
            members, graph_scores, labels=member_labels, batch_size=batch_size
        )
    spec = with_reference(
        bundle.spec,
        normal_scores,
        member_scores=member_scores,
        moments=moments,
        alpha=alpha,
        source=source,
    )
    normal_scores = combined_scores(spec, normal_scores)
    scores = {name: replace(s, probability=None) for name, s in spec.scores.items()}
    calibration = replace(spec.calibration, choice=None)
    summary: dict = {"n_reference": len(normal), "choice": None, "probability": None}
    if anomalous is not None:
        anomalous_scores, _ = detector.raw_scores_batched(
            anomalous, graph_scores, labels=anomalous_labels, batch_size=batch_size
        )
        anomalous_scores = combined_scores(spec, anomalous_scores)
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
    summary["warnings"] = reference_warnings(spec)
    return spec, summary


def reference_warnings(spec: BundleSpec) -> list[str]:
    """What a user must know about the default score's reference: if it is too small for the
    bundle's alpha, the smallest p-value it can give, 1 / (n + 1), is above alpha and the score
    never flags anything. A combined score calibrated on one set of images has half of them."""
    alpha = spec.calibration.alpha
    name = spec.default_score
    n = len(spec.scores[name].reference)
    if n == 0 or math.isfinite(conformal_threshold(np.asarray(spec.scores[name].reference), alpha)):
        return []
    needed = math.ceil(1.0 / alpha - 1.0 - 1e-9)  # the smallest n with alpha (n + 1) >= 1
    halves = n < spec.calibration.n_reference
    return [
        f"the default score {name!r} has a reference of {n} images, so its p-value is never "
        f"below 1/{n + 1} = {1.0 / (n + 1):.3g} and it flags nothing at alpha {alpha:g}; "
        f"calibrate on at least {2 * needed if halves else needed} held-out normal images"
        + (" (the combined score's reference is half of them)" if halves else "")
    ]
