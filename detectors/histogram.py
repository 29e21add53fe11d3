"""The x-axis of a score histogram: robust limits, and what falls outside them (arrays only).

Scores are heavy-tailed: a few images far from the rest (an all-black image, a decoding accident)
would stretch an axis from the lowest to the highest score over a range where every bar falls in
two or three bins. The limits here are percentiles of all the samples pooled (0.5th and 99.5th by
default, so 1% of the values at most fall outside), and `outside` counts, per sample, what lies
beyond each limit so that a plot can say so instead of hiding it. Drawn values beyond a limit go to
the edge bin (`clip`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

LOWER_PERCENTILE = 0.5
UPPER_PERCENTILE = 99.5


@dataclass(frozen=True)
class HistogramLimits:
    low: float
    high: float

    def outside(self, values: np.ndarray) -> tuple[int, int]:
        """(how many values lie below `low`, how many above `high`); NaN counts as neither."""
        values = np.asarray(values, dtype=np.float64)
        return int(np.sum(values < self.low)), int(np.sum(values > self.high))

    def clip(self, values: np.ndarray) -> np.ndarray:
        """The values with everything beyond a limit moved onto it (NaN dropped), for drawing."""
        values = np.asarray(values, dtype=np.float64)
        return np.clip(values[~np.isnan(values)], self.low, self.high)

    def bins(self, n: int = 40) -> np.ndarray:
        return np.linspace(self.low, self.high, n + 1)

    def to_json(self, samples: Mapping[str, np.ndarray]) -> dict:
        """The limits and, per named sample, how many of its values each limit cuts off."""
        counts = {name: self.outside(values) for name, values in samples.items()}
        return {
            "low": self.low,
            "high": self.high,
            "below": {name: below for name, (below, _) in counts.items()},
            "above": {name: above for name, (_, above) in counts.items()},
        }


def robust_limits(
    *samples: np.ndarray,
    lower_percentile: float = LOWER_PERCENTILE,
    upper_percentile: float = UPPER_PERCENTILE,
) -> HistogramLimits:
    """Limits from the percentiles of the finite values of all `samples` pooled.

    With no finite value the limits are (0, 1); a single value v gets (v - 0.5, v + 0.5), so the
    axis always has a width."""
    if not 0 <= lower_percentile < upper_percentile <= 100:
        msg = f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower_percentile}, "
        msg += f"{upper_percentile}"
        raise ValueError(msg)
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples] or [[]])
    finite = pooled[np.isfinite(pooled)]
    if not len(finite):
        return HistogramLimits(0.0, 1.0)
    low, high = np.percentile(finite, [lower_percentile, upper_percentile])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return HistogramLimits(float(low), float(high))
