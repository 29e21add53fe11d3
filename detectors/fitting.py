"""Fit a bundle's calibration on held-out normal images: the reference of every score and the
per-pixel statistics that turn heat maps into z-scores; with labelled anomalies, the operating
point and maps to P(anomaly). Runs the graph; never touches its weights."""

from __future__ import annotations

import copy

import numpy as np

from .bundle import Bundle
from .calibration import (
    alpha_for_threshold,
    check_alpha,
    conformal_threshold,
    reference_from_scores,
)
from .errors import InputError
from .images import as_uint8_batch
from .labels import check_labels, label_spec
from .runtime import OnnxSession
from .supervised import choose_threshold, fit_probability_map


def score_all(
    session: OnnxSession,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    with_map: bool = False,
    labels=None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every score the bundle offers for `images` (with their `labels` for a conditional bundle),
    in batches; optionally the maps' sum and sum of squares per pixel (for heat-map statistics),
    stacked as (2, C, H, W)."""
    names = session.bundle.score_names()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    moments = None
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        batch_labels = None if labels is None else labels[start : start + batch_size]
        values, bits_map = session.raw_scores(batch, names, with_map=with_map, labels=batch_labels)
        for name in names:
            parts[name].append(values[name])
        if bits_map is not None:
            batch_moments = map_moments(bits_map)
            moments = batch_moments if moments is None else moments + batch_moments
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def calibrated_metadata(
    bundle: Bundle,
    images,
    *,
    labels=None,
    alpha: float | None = None,
    source: str | None = None,
    batch_size: int = 256,
    device: str = "auto",
) -> dict:
    """Metadata with references recomputed on `images` (normal, never seen in training). A
    conditional bundle needs their true `labels`: the reference is then the scores of normal images
    given their own class, pooled over classes."""
    meta, _ = recalibrate(
        bundle,
        images,
        labels=labels,
        alpha=alpha,
        source=source,
        batch_size=batch_size,
        device=device,
    )
    return meta


def map_moments(bits_map: np.ndarray) -> np.ndarray:
    """Per-pixel sum and sum of squares of maps (B, C, H, W), stacked as (2, C, H, W)."""
    bits_map = np.asarray(bits_map, dtype=np.float64)
    return np.stack([bits_map.sum(0), (bits_map**2).sum(0)])


def metadata_with_reference(
    metadata: dict,
    scores: dict[str, np.ndarray],
    *,
    moments: np.ndarray | None = None,
    alpha: float | None = None,
    source: str | None = None,
) -> dict:
    """A copy of `metadata` whose references are the given scores of held-out normal images (one
    array per score the bundle offers) and whose heat-map statistics come from `moments` (the
    maps' per-pixel sum and sum of squares over the same images). Arrays in, JSON out."""
    meta = copy.deepcopy(metadata)
    missing = set(meta["scores"]) - set(scores)
    if missing:
        msg = f"no calibration scores for {sorted(missing)}"
        raise InputError(msg)
    sizes = {len(np.atleast_1d(scores[name])) for name in meta["scores"]}
    if len(sizes) != 1:
        msg = f"calibration scores of different lengths {sorted(sizes)}"
        raise InputError(msg)
    n = sizes.pop()
    for name in meta["scores"]:
        try:
            meta["scores"][name]["reference"] = reference_from_scores(scores[name]).tolist()
        except InputError as error:
            msg = f"score {name!r} on the calibration images: {error}"
            raise InputError(msg) from None
    if moments is not None and meta.get("heatmap"):
        mean = moments[0] / n
        std = np.sqrt(np.maximum(moments[1] / n - mean**2, 0.0))
        meta["heatmap"]["mean"] = mean.ravel().round(5).tolist()
        meta["heatmap"]["std"] = std.ravel().round(5).tolist()
    calibration = meta["calibration"]
    calibration["alpha"] = check_alpha(calibration["alpha"] if alpha is None else alpha)
    calibration["n_reference"] = n
    if source is not None:
        calibration["data"] = source
    return meta


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
) -> tuple[dict, dict]:
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
    score = score or bundle.metadata["default_score"]
    if score not in bundle.metadata["scores"]:
        msg = f"unknown score {score!r}; this bundle offers {bundle.score_names()}"
        raise InputError(msg)
    spec = bundle.metadata["input"]
    shape = {"channels": spec["channels"], "height": spec["height"], "width": spec["width"]}
    normal = as_uint8_batch(normal, **shape)
    anomalous = None if anomalous is None else as_uint8_batch(anomalous, **shape)
    label_input = label_spec(bundle.metadata)
    labels = check_labels(labels, len(normal), label_input)
    if anomalous is not None:
        anomalous_labels = check_labels(anomalous_labels, len(anomalous), label_input)
    session = OnnxSession(bundle, device=device)
    has_map = bool(bundle.metadata.get("heatmap"))
    normal_scores, moments = score_all(
        session, normal, batch_size=batch_size, with_map=has_map, labels=labels
    )
    meta = metadata_with_reference(
        bundle.metadata, normal_scores, moments=moments, alpha=alpha, source=source
    )
    calibration = meta["calibration"]
    calibration.pop("choice", None)
    for score_spec in meta["scores"].values():
        score_spec.pop("probability", None)
    summary: dict = {"n_reference": len(normal), "choice": None, "probability": None}
    if anomalous is not None:
        anomalous_scores, _ = score_all(
            session, anomalous, batch_size=batch_size, labels=anomalous_labels
        )
        if rule is not None:
            choice = choose_threshold(
                normal_scores[score], anomalous_scores[score], rule=rule, target=target
            )
            reference = np.asarray(meta["scores"][score]["reference"])
            calibration["alpha"] = alpha_for_threshold(reference, choice.threshold)
            calibration["choice"] = {
                "score": score,
                **choice.to_json(),
                "alpha": calibration["alpha"],
                "normal_data": source,
                "anomalous_data": anomalous_source,
                "note": "rates measured on the calibration images themselves (in-sample)",
            }
            summary["choice"] = calibration["choice"]
        if probability is not None:
            for name in meta["scores"]:
                meta["scores"][name]["probability"] = fit_probability_map(
                    normal_scores[name],
                    anomalous_scores[name],
                    method=probability,
                    anomaly_rate=anomaly_rate,
                ).to_json()
            summary["probability"] = probability
    summary["alpha"] = calibration["alpha"]
    summary["thresholds"] = {
        name: conformal_threshold(np.asarray(s["reference"]), calibration["alpha"])
        for name, s in meta["scores"].items()
    }
    return meta, summary
