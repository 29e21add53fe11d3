"""Score histograms' x-axis: robust limits for heavy tails, and counts of what lies beyond them."""

import numpy as np
import pytest

from detectors.histogram import HistogramLimits, robust_limits


def heavy_tailed(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """1,000 normal scores near 0 with 3 far outliers (31.8 and two at -3.9 ... the issue's axis),
    1,000 anomalous scores near 3."""
    rng = np.random.default_rng(seed)
    normal = np.r_[rng.normal(0.0, 0.5, 997), -3.9, 31.8, 25.0]
    anomalous = rng.normal(3.0, 0.5, 1000)
    return normal, anomalous


def test_limits_of_a_heavy_tailed_sample_are_its_robust_percentiles():
    normal, anomalous = heavy_tailed()
    limits = robust_limits(normal, anomalous)
    pooled = np.r_[normal, anomalous]
    assert (limits.low, limits.high) == pytest.approx(tuple(np.percentile(pooled, [0.5, 99.5])))
    # The outliers no longer set the axis: min to max spans 35.7, the robust limits about 5.
    assert limits.high - limits.low < 0.2 * (pooled.max() - pooled.min())
    assert -3.9 < limits.low < -0.5
    assert 3.5 < limits.high < 25.0


def test_what_lies_beyond_the_limits_is_counted_per_sample():
    normal, anomalous = heavy_tailed()
    limits = robust_limits(normal, anomalous)
    below, above = limits.outside(normal)
    assert below == int(np.sum(normal < limits.low)) >= 1  # -3.9 at least
    assert above == int(np.sum(normal > limits.high)) >= 2  # 31.8 and 25.0
    stated = limits.to_json({"normal": normal, "anomalous": anomalous})
    assert stated["above"]["normal"] == above
    assert stated["below"]["anomalous"] == int(np.sum(anomalous < limits.low))
    total = sum(stated["below"].values()) + sum(stated["above"].values())
    assert total <= 0.01 * 2000 + 2  # 0.5% each side, give or take ties
    # Drawn values beyond the limits land in the edge bins, so none disappears from the plot.
    clipped = limits.clip(normal)
    assert len(clipped) == len(normal)
    assert clipped.min() == limits.low
    assert clipped.max() == limits.high


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([np.array([2.0, 2.0, 2.0])], (1.5, 2.5)),  # one value: the axis still has a width
        ([np.array([np.nan, np.inf])], (0.0, 1.0)),  # nothing finite
        ([np.array([]), np.array([])], (0.0, 1.0)),
    ],
)
def test_degenerate_samples_get_an_axis_with_a_width(samples, expected):
    limits = robust_limits(*samples)
    assert (limits.low, limits.high) == expected


def test_infinite_scores_count_as_beyond_and_nan_as_neither():
    limits = HistogramLimits(0.0, 1.0)
    assert limits.outside(np.array([-np.inf, 0.5, np.inf, np.inf, np.nan])) == (1, 2)


def test_percentiles_must_be_ordered():
    with pytest.raises(ValueError, match="percentiles"):
        robust_limits(np.arange(5.0), lower_percentile=60, upper_percentile=40)
