"""Conformal calibration: raw scores in, p-values and decisions out. Arrays only: no images, no
ONNX.

Identities (tested): higher raw score = more anomalous; p-values lie in (0, 1];
`is_anomaly == (p_value <= alpha)`; on exchangeable normal data P(p_value <= alpha) <= alpha.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError


def check_alpha(alpha: float) -> float:
    """Return alpha as a float, or raise InputError unless 0 < alpha < 1."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        msg = f"alpha must be a number in (0, 1), got {alpha!r}"
        raise InputError(msg) from None
    if not (0.0 < alpha < 1.0):
        msg = f"alpha must be in (0, 1), got {alpha}"
        raise InputError(msg)
    return alpha


def check_scores(scores, *, name: str = "scores") -> np.ndarray:
    """Return scores as a 1-D float64 array (a scalar becomes one score); NaN and infinity are
    refused. An empty array passes: an empty batch has empty results."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        msg = f"{name} must be one-dimensional, got shape {array.shape}"
        raise InputError(msg)
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        msg = f"{name} contain {bad} non-finite value(s) (NaN or infinity)"
        raise InputError(msg)
    return array


def reference_from_scores(scores) -> np.ndarray:
    """Sort held-out normal scores into a calibration reference (at least one score)."""
    reference = np.sort(check_scores(scores, name="reference scores"))
    if reference.size == 0:
        msg = "a calibration reference needs at least one normal score"
        raise InputError(msg)
    return reference


def conformal_p_values(scores, reference: np.ndarray) -> np.ndarray:
    """p = (1 + #{reference >= s}) / (n + 1) for each score s; `reference` must be sorted."""
    scores = check_scores(scores)
    n = reference.size
    at_least = n - np.searchsorted(reference, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


def conformal_threshold(reference: np.ndarray, alpha: float) -> float:
    """The raw score above which p <= alpha (`score > threshold`); +inf when n is too small.

    p <= alpha  <=>  #{ref >= s} <= m with m = floor(alpha (n + 1)) - 1
                <=>  s > ref[n - m - 1] (ascending order).
    """
    alpha = check_alpha(alpha)
    n = reference.size
    # The small epsilon keeps alpha * (n + 1) = 10.0 from flooring to 9 through rounding error.
    m = math.floor(alpha * (n + 1) + 1e-9) - 1
    if m < 0:
        return math.inf
    return float(reference[n - m - 1])


def alpha_for_threshold(reference: np.ndarray, threshold: float) -> float:
    """The alpha whose rule `p <= alpha` flags what `score > threshold` flags, up to the
    reference's grid: (1 + #{reference > threshold}) / (n + 1), at most n / (n + 1).

    s > threshold  =>  #{ref >= s} <= #{ref > threshold}  =>  p(s) <= alpha.
    """
    n = reference.size
    above = n - np.searchsorted(reference, threshold, side="right")
    return float(min(1.0 + above, n) / (n + 1.0))


def min_reference_size(alpha: float) -> int:
    """The smallest reference for which any score can reach p <= alpha."""
    return math.ceil(1.0 / check_alpha(alpha) - 1e-9) - 1


def map_moments(bits_map) -> np.ndarray:
    """Per-pixel sum and sum of squares of maps (B, C, H, W), stacked as (2, C, H, W): summed
    over batches, they give the per-pixel mean and std of normal images' heat maps."""
    bits_map = np.asarray(bits_map, dtype=np.float64)
    return np.stack([bits_map.sum(0), (bits_map**2).sum(0)])


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values: flag q <= Q to control the false discovery rate at Q.

    q_(i) = min over j >= i of p_(j) * n / j, for p-values sorted ascending, capped at 1.
    """
    p = check_scores(p_values, name="p-values")
    if np.any((p <= 0) | (p > 1)):
        msg = "p-values must lie in (0, 1]"
        raise InputError(msg)
    n = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * n / np.arange(1, n + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(n)
    q[order] = q_sorted
    return q
