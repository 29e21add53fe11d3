"""The input-complexity correction: code lengths in bits/dim, and corrected scores that fall as
complexity rises at equal likelihood."""

import numpy as np
import pytest

from detectors import InputError
from detectors.complexity import code_length_bits_per_dim
from detectors.runtime import scores_from_outputs
from detectors.score_kinds import ComplexityScore, DifferenceScore, OutputScore

SPECS = {
    "nll": OutputScore(output="nll_bits_per_dim"),
    "nll_minus_zlib": ComplexityScore(output="nll_bits_per_dim", compressor="zlib"),
    "nll_minus_png": ComplexityScore(output="nll_bits_per_dim", compressor="png"),
    "ratio": DifferenceScore(output="nll_bits_per_dim", minus_output="bg"),
}


def noisier_and_noisier(fractions, size=28, seed=0):
    """One image per fraction: a smooth gradient with that share of pixels replaced by noise."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    noise = rng.integers(0, 256, (size, size), dtype=np.uint8)
    order = rng.permutation(size * size)
    images = []
    for fraction in fractions:
        image = base.copy().ravel()
        chosen = order[: round(fraction * size * size)]
        image[chosen] = noise.ravel()[chosen]
        images.append(image.reshape(size, size))
    return np.stack(images)[:, None]


@pytest.mark.parametrize("compressor", ["zlib", "png"])
def test_code_length_grows_with_complexity(compressor):
    images = noisier_and_noisier([0.0, 0.1, 0.25, 0.45, 1.0])
    bits = code_length_bits_per_dim(images, compressor)
    # Strictly longer until the data stops compressing; then the stored size is the ceiling.
    assert np.all(np.diff(bits[:4]) > 0)
    assert bits[4] >= bits[3]
    assert bits[0] < 1.5
    assert bits[-1] > 7.9


@pytest.mark.parametrize("compressor", ["zlib", "png"])
def test_corrected_score_falls_as_complexity_rises_at_equal_likelihood(compressor):
    images = noisier_and_noisier([0.0, 0.1, 0.25, 0.45])
    outputs = {"nll_bits_per_dim": np.full(4, 4.0)}
    name = f"nll_minus_{compressor}"
    corrected = scores_from_outputs(SPECS, [name], outputs, images=images)[name]
    assert np.all(np.diff(corrected) < 0)
    np.testing.assert_allclose(corrected, 4.0 - code_length_bits_per_dim(images, compressor))


def test_precomputed_code_lengths_give_the_same_scores():
    images = noisier_and_noisier([0.0, 0.5, 1.0])
    outputs = {"nll_bits_per_dim": np.array([1.0, 2.0, 3.0]), "bg": np.array([0.5, 0.5, 4.0])}
    direct = scores_from_outputs(SPECS, list(SPECS), outputs, images=images)
    codes = {c: code_length_bits_per_dim(images, c) for c in ("zlib", "png")}
    cached = scores_from_outputs(SPECS, list(SPECS), outputs, code_lengths=codes)
    for name in SPECS:
        np.testing.assert_array_equal(direct[name], cached[name])
    np.testing.assert_array_equal(direct["ratio"], [0.5, 1.5, -1.0])


def test_a_complexity_score_needs_images_or_code_lengths():
    with pytest.raises(ValueError, match="code lengths"):
        scores_from_outputs(SPECS, ["nll_minus_zlib"], {"nll_bits_per_dim": np.ones(2)})


def test_code_length_refuses_what_is_not_a_uint8_batch():
    with pytest.raises(InputError):
        code_length_bits_per_dim(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError):
        code_length_bits_per_dim(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="compressor"):
        code_length_bits_per_dim(np.zeros((2, 1, 8, 8), np.uint8), "lzma")
