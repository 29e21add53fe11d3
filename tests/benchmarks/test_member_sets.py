"""benchmarks/member_sets.py: the rule that picks the VAE's combined-score members (the smallest
largest shortfall from the best set on any protocol) and the saved units it reads."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import member_sets


def test_the_shortfall_is_taken_from_each_protocols_best_set_and_the_largest_kept():
    table = {
        "strong on a, weak on b": {"a": [99.0, 97.0], "b": [90.0]},  # means 98.0, 90.0
        "even": {"a": [97.5, 97.5], "b": [91.0]},  # means 97.5, 91.0
    }
    largest = member_sets.shortfalls(table)
    assert largest == pytest.approx({"strong on a, weak on b": 1.0, "even": 0.5})
    assert min(largest, key=largest.get) == "even"


def test_a_saved_unit_names_its_data_set_hyphens_included(tmp_path):
    path = tmp_path / "vae-fashion-mnist-6.npz"
    np.savez(
        path,
        **{
            "first/latent_nll": [1.0, 2.0],
            "normal/latent_nll": [1.5],
            "anomalous/latent_nll": [3.0],
        },
    )
    dataset, (first, normal, anomalous) = member_sets.saved_unit(path)
    assert dataset == "fashion-mnist"
    np.testing.assert_array_equal(first["latent_nll"], [1.0, 2.0])
    np.testing.assert_array_equal(normal["latent_nll"], [1.5])
    np.testing.assert_array_equal(anomalous["latent_nll"], [3.0])
