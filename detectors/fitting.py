"""Fit a bundle's calibration on held-out normal images: the reference of every score and the
per-pixel statistics that turn heat maps into z-scores. Runs the graph; never touches its weights."""

from __future__ import annotations

import copy

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, reference_from_scores
from .errors import InputError
from .images import as_uint8_batch
from .runtime import OnnxSession


def score_all(session: OnnxSession, images: np.ndarray, *, batch_size: int = 256,
              with_map: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every score the bundle offers for `images`, in batches; optionally the maps' sum and sum of
    squares per pixel (for heat-map statistics), stacked as (2, C, H, W)."""
    names = session.bundle.score_names()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    moments = None
    for start in range(0, len(images), batch_size):
        values, bits_map = session.raw_scores(images[start:start + batch_size], names, with_map=with_map)
        for name in names:
            parts[name].append(values[name])
        if bits_map is not None:
            batch_moments = map_moments(bits_map)
            moments = batch_moments if moments is None else moments + batch_moments
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments


def calibrated_metadata(bundle: Bundle, images, *, alpha: float | None = None, source: str | None = None,
                        batch_size: int = 256, device: str = "auto") -> dict:
    """Metadata with references recomputed on `images` (normal, never seen in training)."""
    spec = bundle.metadata["input"]
    images = as_uint8_batch(images, channels=spec["channels"], height=spec["height"], width=spec["width"])
    session = OnnxSession(bundle, device=device)
    has_map = bool(bundle.metadata.get("heatmap"))
    scores, moments = score_all(session, images, batch_size=batch_size, with_map=has_map)
    return metadata_with_reference(bundle.metadata, scores, moments=moments, alpha=alpha, source=source)


def map_moments(bits_map: np.ndarray) -> np.ndarray:
    """Per-pixel sum and sum of squares of maps (B, C, H, W), stacked as (2, C, H, W)."""
    bits_map = np.asarray(bits_map, dtype=np.float64)
    return np.stack([bits_map.sum(0), (bits_map ** 2).sum(0)])


def metadata_with_reference(metadata: dict, scores: dict[str, np.ndarray], *,
                            moments: np.ndarray | None = None, alpha: float | None = None,
                            source: str | None = None) -> dict:
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
        std = np.sqrt(np.maximum(moments[1] / n - mean ** 2, 0.0))
        meta["heatmap"]["mean"] = mean.ravel().round(5).tolist()
        meta["heatmap"]["std"] = std.ravel().round(5).tolist()
    calibration = meta["calibration"]
    calibration["alpha"] = check_alpha(calibration["alpha"] if alpha is None else alpha)
    calibration["n_reference"] = n
    if source is not None:
        calibration["data"] = source
    return meta
