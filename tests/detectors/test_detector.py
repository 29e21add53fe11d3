"""Detector.score: raw score, conformal p-value and decision per image, from ONNX Runtime alone."""

import numpy as np
import pytest

from detectors import Detector, InputError


@pytest.fixture(scope="module")
def detectors(pixelcnn_bundle, vae_bundle):
    return {
        "pixelcnn": Detector.load(pixelcnn_bundle, device="cpu"),
        "vae": Detector.load(vae_bundle, device="cpu"),
    }


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_score_identities_hold_for_every_score_and_alpha(detectors, digits_test, kind):
    detector = detectors[kind]
    images = digits_test.images[:40]
    for name in detector.score_names:
        for alpha in (0.05, 0.2, 0.5):
            result = detector.score(images, score=name, alpha=alpha)
            assert result.score_name == name
            assert len(result) == 40
            assert np.all((result.p_values > 0) & (result.p_values <= 1))
            np.testing.assert_array_equal(result.is_anomaly, result.p_values <= alpha)
            np.testing.assert_array_equal(result.is_anomaly, result.scores > result.threshold)


def test_higher_scores_get_lower_p_values(detectors, digits_test):
    result = detectors["pixelcnn"].score(digits_test.images[:60])
    order = np.argsort(result.scores)
    assert np.all(np.diff(result.p_values[order]) <= 0)


def test_a_score_does_not_depend_on_the_rest_of_its_batch(detectors, digits_test):
    for detector in detectors.values():
        alone = detector.score(digits_test.images[:1]).scores
        together = detector.score(digits_test.images[:9]).scores[:1]
        np.testing.assert_allclose(alone, together, rtol=1e-5)


def test_default_score_and_alpha_come_from_the_bundle(detectors, digits_test):
    detector = detectors["vae"]
    result = detector.score(digits_test.images[:3])
    assert result.score_name == detector.default_score
    assert result.alpha == detector.default_alpha == detector.spec.calibration.alpha


def test_heatmap_has_the_image_shape_and_its_mean_is_the_score(detectors, digits_test):
    detector = detectors["pixelcnn"]
    result = detector.score(digits_test.images[:5], score="nll", heatmap=True)
    assert result.heatmap.shape == result.bits_map.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(result.bits_map.mean((1, 2, 3)), result.scores, rtol=1e-5)
    assert detector.score(digits_test.images[:5]).heatmap is None


def test_grey_images_may_come_without_a_channel_axis(detectors, digits_test):
    detector = detectors["pixelcnn"]
    np.testing.assert_allclose(
        detector.score(digits_test.images[:4, 0]).scores,
        detector.score(digits_test.images[:4]).scores,
    )


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((2, 1, 9, 8), np.uint8), {}, "shape \\(B, 1, 8, 8\\)"),
        (np.zeros((0, 1, 8, 8), np.uint8), {}, "no images"),
        (np.full((1, 1, 8, 8), np.nan), {}, "NaN"),
        (np.full((1, 1, 8, 8), -1), {}, "within 0..255"),
        (np.array([["a"]]), {}, "numeric"),
        (np.zeros((1, 1, 8, 8), np.uint8), {"alpha": 0}, "alpha must be in \\(0, 1\\)"),
        (np.zeros((1, 1, 8, 8), np.uint8), {"alpha": 1.0}, "alpha must be in \\(0, 1\\)"),
        (np.zeros((1, 1, 8, 8), np.uint8), {"score": "magic"}, "unknown score 'magic'"),
    ],
)
def test_bad_input_is_a_named_error(detectors, images, kwargs, message):
    with pytest.raises(InputError, match=message):
        detectors["pixelcnn"].score(images, **kwargs)


def test_provider_is_reported(detectors):
    assert detectors["pixelcnn"].provider == "CPUExecutionProvider"


def test_cuda_on_an_onnxruntime_without_it_falls_back_to_cpu_and_says_so(
    vae_bundle, digits_test, caplog
):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with caplog.at_level("WARNING", logger="detectors.runtime"):
        detector = Detector.load(vae_bundle, device="cuda")
    assert "no CUDA execution provider" in caplog.text
    assert "falling back to CPU" in caplog.text
    assert detector.provider == "CPUExecutionProvider"
    expected = Detector.load(vae_bundle, device="cpu").score(digits_test.images[:4])
    np.testing.assert_allclose(detector.score(digits_test.images[:4]).scores, expected.scores)


def test_a_cuda_provider_that_fails_to_start_falls_back_to_cpu_and_says_so(
    vae_bundle, digits_test, caplog, monkeypatch
):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    # As onnxruntime-gpu on a machine without a GPU: the provider is listed, then fails.
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with caplog.at_level("WARNING", logger="detectors.runtime"):
        detector = Detector.load(vae_bundle, device="cuda")
    assert "CUDAExecutionProvider failed to start" in caplog.text
    assert "falling back to CPUExecutionProvider" in caplog.text
    assert detector.provider == "CPUExecutionProvider"
    assert np.all(np.isfinite(detector.score(digits_test.images[:4]).scores))
