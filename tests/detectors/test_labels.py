"""A conditional detector scores "a normal example of class y": labels pass through to the graph,
and missing, unexpected or unknown labels are refused with a clear error."""

import numpy as np
import pytest

from detectors import Detector, InputError
from detectors.labels import check_labels
from detectors.spec import LabelSpec

SPEC = LabelSpec(input="labels", num_classes=5, classes=(0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def conditional(conditional_pixelcnn_bundle):
    return Detector.load(conditional_pixelcnn_bundle, device="cpu")


@pytest.fixture(scope="module")
def normal_digits(digits_test):
    return digits_test.with_classes([0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("labels", "n", "message"),
    [
        (None, 2, "class-conditional"),
        ([0], 2, "one label per image"),
        ([[0, 1]], 2, "one label per image"),
        ([0, 5], 2, r"\[5\] out of range"),
        ([-1, 0], 2, r"\[-1\] out of range"),
        ([0.5, 1], 2, "whole numbers"),
        ([np.nan, 1], 2, "whole numbers"),
        (["a", "b"], 2, "whole numbers"),
    ],
)
def test_bad_labels_are_refused(labels, n, message):
    with pytest.raises(InputError, match=message):
        check_labels(labels, n, SPEC)


def test_labels_are_refused_by_an_unconditional_bundle():
    with pytest.raises(InputError, match="not conditional"):
        check_labels([0], 1, None)
    assert check_labels(None, 3, None) is None


def test_whole_labels_of_any_numeric_type_are_accepted():
    np.testing.assert_array_equal(check_labels([1.0, 4], 2, SPEC), [1, 4])
    assert check_labels(np.int32(3), 1, SPEC).dtype == np.int64


def test_detector_passes_labels_through_and_they_change_the_score(conditional, normal_digits):
    images, labels = normal_digits.images[:30], normal_digits.labels[:30]
    assert conditional.conditional
    assert conditional.classes == [0, 1, 2, 3, 4]
    result = conditional.score(images, labels=labels, score="nll")
    direct = conditional.session.run(images, ["nll_bits_per_dim"], labels=labels)
    np.testing.assert_allclose(result.scores, direct["nll_bits_per_dim"], rtol=1e-6)
    wrong = conditional.score(images, labels=(labels + 2) % 5, score="nll")
    assert np.mean(wrong.scores) > np.mean(result.scores)
    raw = conditional.raw_scores(images, ["nll"], labels=labels)["nll"]
    np.testing.assert_allclose(raw, result.scores)


def test_detector_refuses_missing_or_unknown_labels(conditional, normal_digits, pixelcnn_bundle):
    images = normal_digits.images[:3]
    with pytest.raises(InputError, match="class-conditional"):
        conditional.score(images)
    with pytest.raises(InputError, match=r"\[7\] out of range"):
        conditional.score(images, labels=[0, 1, 7])
    with pytest.raises(InputError, match="not conditional"):
        Detector.load(pixelcnn_bundle, device="cpu").score(images, labels=[0, 1, 2])


def test_wrong_labels_look_anomalous(conditional, normal_digits):
    """Mismatched image and label is the conditional model's anomaly: such pairs score higher."""
    from detectors.evaluation import evaluate

    images, labels = normal_digits.images, normal_digits.labels
    report = evaluate(
        conditional, images, images, normal_labels=labels, anomalous_labels=(labels + 1) % 5
    )
    auroc = {row["score"]: row["auroc"] for row in report["rows"]}
    assert auroc["nll"] > 0.65
