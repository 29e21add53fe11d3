"""The report's score histograms: robust axes that state what they leave out."""

import numpy as np

from training.plots import plot_histograms

from ..detectors.test_histogram import heavy_tailed


def test_score_histograms_use_robust_limits_and_state_the_clipped_counts(tmp_path):
    normal, anomalous = heavy_tailed()
    name, stated = plot_histograms(
        {"nll": normal, "flat": np.full(50, 7.0)},
        {"nll": anomalous, "flat": np.full(50, 7.0)},
        {"nll": 1.2, "flat": 40.0},  # the second threshold lies beyond its axis
        "nll",
        0.01,
        tmp_path,
    )
    assert (tmp_path / name).stat().st_size > 0
    limits = stated["nll"]
    pooled = np.r_[normal, anomalous]
    assert (limits["low"], limits["high"]) == tuple(np.percentile(pooled, [0.5, 99.5]))
    assert limits["above"]["normal"] == int(np.sum(normal > limits["high"])) >= 2
    assert limits["below"]["anomalous"] == int(np.sum(anomalous < limits["low"]))
    assert stated["flat"] == {
        "low": 6.5,
        "high": 7.5,
        "below": {"normal": 0, "anomalous": 0},
        "above": {"normal": 0, "anomalous": 0},
    }
