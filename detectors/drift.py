"""Drift of "normal": on normal traffic conformal p-values are uniform on (0, 1]; a
Kolmogorov-Smirnov statistic of the most recent p-values against uniform says when that stops
being true."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .calibration import check_scores
from .errors import InputError


@dataclass(frozen=True)
class DriftStatus:
    statistic: float  # KS distance between the window's p-values and uniform, in [0, 1]
    p_value: float  # probability of a distance at least this large if nothing drifted
    window: int  # number of p-values in the window


def ks_uniform(p_values, *, reference_size: int | None = None) -> DriftStatus:
    """KS test of p-values against Uniform(0, 1).

    Conformal p-values all share one finite reference of n scores, so their distance from uniform
    is the two-sample distance between the window and the reference: with `reference_size` = n,
    the p-value uses the effective size m n / (m + n). Without it, the one-sample test is too
    eager whenever the window m is not small beside n (at m = 4 n it flags about 80% of normal
    windows at the 5% level).
    """
    from scipy import stats  # here, not at import: scipy.stats costs the service 0.4 s to start

    p = check_scores(p_values, name="p-values")
    if p.size == 0:
        msg = "a KS test needs at least one p-value"
        raise InputError(msg)
    result = stats.kstest(p, "uniform")
    p_value = float(result.pvalue)
    if reference_size is not None:
        if reference_size < 1:
            msg = f"reference_size must be >= 1, got {reference_size}"
            raise InputError(msg)
        effective = max(1, round(p.size * reference_size / (p.size + reference_size)))
        p_value = float(stats.kstwo.sf(result.statistic, effective))
    return DriftStatus(float(result.statistic), p_value, int(p.size))


class DriftMonitor:
    """A thread-safe sliding window of the last `window` p-values and its KS statistic; pass the
    reference's size so the KS p-value accounts for it (see ks_uniform)."""

    def __init__(
        self, window: int = 1000, min_samples: int = 50, *, reference_size: int | None = None
    ):
        if window < 1 or min_samples < 1:
            msg = "window and min_samples must be >= 1"
            raise ValueError(msg)
        self.window = window
        self.min_samples = min_samples
        self.reference_size = reference_size  # the calibration reference's n (see ks_uniform)
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def update(self, p_values) -> None:
        with self._lock:
            self._values.extend(np.asarray(p_values, dtype=np.float64).ravel().tolist())

    def status(self) -> DriftStatus | None:
        """The current KS status, or None until `min_samples` p-values have arrived."""
        with self._lock:
            values = np.fromiter(self._values, dtype=np.float64)
        if values.size < self.min_samples:
            return None
        return ks_uniform(values, reference_size=self.reference_size)
