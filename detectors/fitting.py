"""Fit a bundle's calibration on held-out normal images: the reference of every score and the
per-pixel statistics that turn heat maps into z-scores. Runs the graph; never touches its weights."""

from __future__ import annotations

import copy

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, reference_from_scores
from .errors import InputError
from .images import as_uint8_batch
from .labels import check_labels, label_spec
from .runtime import OnnxSession


def score_all(session: OnnxSession, images: np.ndarray, *, batch_size: int = 256,
              with_map: bool = False,
              labels=None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every score the bundle offers for `images` (with their `labels` for a conditional bundle),
    in batches; optionally the maps' sum and sum of squares per pixel (for heat-map statistics),
    stacked as (2, C, H, W)."""
    names = session.bundle.score_names()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    moments = None
    for start in range(0, len(images), batch_size):
        batch_labels = None if labels is None else labels[start:start + batch_size]
        values, bits_map = session.raw_scores(images[start:start + batch_size], names,
                                              with_map=with_map, labels=batch_labels)
        for name in names:
            parts[name].append(values[name])
        if bits_map is not None:
            bits_map = bits_map.astype(np.float64)
            batch_moments = np.stack([bits_map.sum(0), (bits_map ** 2).sum(0)])
            moments = batch_moments if moments is None else moments + batch_moments
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def calibrated_metadata(bundle: Bundle, images, *, labels=None, alpha: float | None = None,
                        source: str | None = None, batch_size: int = 256,
                        device: str = "auto") -> dict:
    """Metadata with references recomputed on `images` (normal, never seen in training). A
    conditional bundle needs their true `labels`: the reference is then the scores of normal images
    given their own class, pooled over classes."""
    spec = bundle.metadata["input"]
    images = as_uint8_batch(images, channels=spec["channels"], height=spec["height"], width=spec["width"])
    labels = check_labels(labels, len(images), label_spec(bundle.metadata))
    session = OnnxSession(bundle, device=device)
    has_map = bool(bundle.metadata.get("heatmap"))
    scores, moments = score_all(session, images, batch_size=batch_size, with_map=has_map,
                                labels=labels)
    meta = copy.deepcopy(bundle.metadata)
    for name, values in scores.items():
        try:
            meta["scores"][name]["reference"] = reference_from_scores(values).tolist()
        except InputError as error:
            msg = f"score {name!r} on the calibration images: {error}"
            raise InputError(msg) from None
    if moments is not None:
        n = len(images)
        mean = moments[0] / n
        std = np.sqrt(np.maximum(moments[1] / n - mean ** 2, 0.0))
        meta["heatmap"]["mean"] = mean.ravel().round(5).tolist()
        meta["heatmap"]["std"] = std.ravel().round(5).tolist()
    calibration = meta["calibration"]
    calibration["alpha"] = check_alpha(calibration["alpha"] if alpha is None else alpha)
    calibration["n_reference"] = len(images)
    if source is not None:
        calibration["data"] = source
    return meta
