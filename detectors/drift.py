"""Drift of "normal": on normal traffic conformal p-values are uniform on (0, 1]; a Kolmogorov-Smirnov
statistic of the most recent p-values against uniform says when that stops being true."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .calibration import check_scores


@dataclass(frozen=True)
class DriftStatus:
    statistic: float  # KS distance between the window's p-values and uniform, in [0, 1]
    p_value: float  # probability of a distance at least this large if nothing drifted
    window: int  # number of p-values in the window


def ks_uniform(p_values) -> DriftStatus:
    """KS test of p-values against Uniform(0, 1)."""
    p = check_scores(p_values, name="p-values")
    result = stats.kstest(p, "uniform")
    return DriftStatus(float(result.statistic), float(result.pvalue), int(p.size))


class DriftMonitor:
    """A thread-safe sliding window of the last `window` p-values and its KS statistic."""

    def __init__(self, window: int = 1000, min_samples: int = 50):
        if window < 1 or min_samples < 1:
            msg = "window and min_samples must be >= 1"
            raise ValueError(msg)
        self.window = window
        self.min_samples = min_samples
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
        return ks_uniform(values)
