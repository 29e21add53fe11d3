"""`normalcy calibrate`: new references from new normal data, the metadata rewritten and nothing
else; with labelled anomalies, an operating point and P(anomaly) maps the detector then uses."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from detectors import Bundle, Detector
from detectors.calibration import alpha_for_threshold
from detectors.onnxfile import with_metadata_props
from detectors.sources import load_digits
from normalcy.cli import main
from tests.references import expected_reference

NORMAL = "0,1,2,3,4"


@pytest.fixture
def bundle_copy(pixelcnn_bundle, tmp_path):
    path = tmp_path / "model.onnx"
    shutil.copy(pixelcnn_bundle, path)
    return path


def _calibrate(capsys, *args):
    code = main(["calibrate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_calibrate_rewrites_the_references_and_nothing_else(bundle_copy, capsys):
    before = bundle_copy.read_bytes()
    code, out, _ = _calibrate(
        capsys, bundle_copy, "--data", "digits:test", "--normal-classes", NORMAL, "--alpha", "0.2"
    )
    assert code == 0
    after = bundle_copy.read_bytes()
    assert after != before
    assert with_metadata_props(after, {}) == with_metadata_props(before, {})  # same graph bytes
    detector = Detector.load(bundle_copy, device="cpu")
    test = load_digits("test")
    normal = test.images[np.isin(test.labels, [0, 1, 2, 3, 4])]
    assert detector.spec.calibration.n_reference == len(normal)
    assert detector.default_alpha == 0.2
    scores = detector.raw_scores(normal)
    for name in detector.score_names:
        expected = expected_reference(detector.spec, scores, name)
        np.testing.assert_allclose(detector.reference(name), expected, rtol=1e-6)
    summary = json.loads(out)
    assert summary["alpha"] == 0.2
    assert summary["n_reference"] == len(normal)
    assert summary["sha256"] == Bundle.read(bundle_copy).sha256


def test_member_data_references_the_combined_scores_members_on_other_images(
    vae_bundle, tmp_path, capsys
):
    # --member-data: the VAE's combined score keeps every --data image as its reference, its
    # members inside the combination the --member-data images; without it, half of --data each.
    path = tmp_path / "vae.onnx"
    shutil.copy(vae_bundle, path)
    code, _, err = _calibrate(
        capsys, path, "--data", "digits:test", "--member-data", "digits:train",
        "--normal-classes", NORMAL, "--alpha", "0.2",
    )  # fmt: skip
    assert code == 0
    # The fixture trained on digits:train 0-4: valid, but the user is told.
    assert "--member-data is the model's training data" in err
    detector = Detector.load(path, device="cpu")
    test, train = load_digits("test"), load_digits("train")
    normal = test.images[np.isin(test.labels, [0, 1, 2, 3, 4])]
    others = train.images[np.isin(train.labels, [0, 1, 2, 3, 4])]
    scores, member_scores = detector.raw_scores(normal), detector.raw_scores(others)
    combined = detector.spec.scores["combined"]
    assert len(combined.statistics) > 1
    for m in combined.statistics:
        assert len(combined.member_references[m]) == len(others)
    for name in detector.score_names:
        expected = expected_reference(detector.spec, scores, name, member_scores)
        np.testing.assert_allclose(detector.reference(name), expected, rtol=1e-6)
    assert len(detector.reference("combined")) == len(normal)
    code, _, err = _calibrate(capsys, path, "--data", "digits:test", "--normal-classes", NORMAL)
    assert "--member-data" not in err
    halves = Detector.load(path, device="cpu")
    assert len(halves.reference("combined")) == len(normal) // 2
    np.testing.assert_allclose(
        halves.reference("combined"), expected_reference(halves.spec, scores, "combined"), rtol=1e-6
    )


def test_heat_maps_are_z_scores_against_the_calibration_images(bundle_copy, capsys):
    _calibrate(capsys, bundle_copy, "--data", "digits:test", "--normal-classes", NORMAL)
    detector = Detector.load(bundle_copy, device="cpu")
    test = load_digits("test")
    normal = test.images[np.isin(test.labels, [0, 1, 2, 3, 4])]
    z = detector.score(normal, heatmap=True).heatmap  # (B, 1, 8, 8)
    std = np.asarray(detector.spec.heatmap.std).reshape(1, 8, 8)
    varying = std > 1e-2
    np.testing.assert_allclose(z.mean(0)[varying], 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0)[varying], 1.0, atol=1e-3)


@pytest.mark.parametrize(
    "bad",
    [
        ["--data", "idx:/no/such/file.gz"],
        ["--data", "digits:test", "--normal-classes", "42"],
        ["--data", "digits:test", "--anomalous", "folder:/no/such/dir"],
        ["--data", "digits:test", "--alpha", "1.5"],
        ["--data", "digits:test", "--alpha", "0.1", "--anomalous", "digits:test", "--rule", "f1"],
        ["--data", "digits:test", "--anomalous", "digits:test", "--rule", "fpr"],  # no target
        ["--data", "digits:test", "--score", "no_such_score"],
    ],
)
def test_bad_input_leaves_the_bundle_intact(bundle_copy, capsys, bad):
    before = bundle_copy.read_bytes()
    try:
        code = main(["calibrate", str(bundle_copy), *bad])
    except SystemExit as exit_:  # argparse refuses some before the handler runs
        code = exit_.code
    assert code == 2
    assert "error" in capsys.readouterr().err
    assert bundle_copy.read_bytes() == before


def test_labelled_anomalies_choose_alpha_and_map_scores_to_probabilities(bundle_copy, capsys):
    code, out, _ = _calibrate(
        capsys,
        bundle_copy,
        "--data",
        "digits:test",
        "--normal-classes",
        NORMAL,
        "--anomalous",
        "digits:test",
        "--anomalous-classes",
        "5,6,7,8,9",
        "--rule",
        "fpr",
        "--target",
        "0.1",
    )
    assert code == 0
    detector = Detector.load(bundle_copy, device="cpu")
    choice = detector.spec.calibration.choice
    assert choice["rule"] == "fpr"
    assert choice["target"] == 0.1
    assert choice["fpr"] <= 0.1
    assert choice["score"] == detector.default_score
    assert "ROC" in choice["reason"]
    reference = detector.reference(choice["score"])
    assert detector.default_alpha == alpha_for_threshold(reference, choice["threshold"])
    assert json.loads(out)["choice"]["threshold"] == choice["threshold"]

    test = load_digits("test")
    result = detector.score(test.images)
    np.testing.assert_array_equal(result.is_anomaly, result.p_values <= detector.default_alpha)
    anomalous = ~np.isin(test.labels, [0, 1, 2, 3, 4])
    # On the images the choice was made on, the conformal rule flags exactly what it flagged.
    np.testing.assert_array_equal(result.is_anomaly, result.scores > choice["threshold"])
    assert result.probability is not None
    assert np.all((result.probability >= 0) & (result.probability <= 1))
    assert result.probability[anomalous].mean() > result.probability[~anomalous].mean()
    for name in detector.score_names:  # every score gets a map, stored as plain JSON
        assert detector.spec.to_json()["scores"][name]["probability"]["method"] == "isotonic"

    # Recalibrating without labels drops what the labels chose.
    _calibrate(capsys, bundle_copy, "--data", "digits:test", "--normal-classes", NORMAL)
    detector = Detector.load(bundle_copy, device="cpu")
    assert detector.spec.calibration.choice is None
    assert "choice" not in detector.spec.to_json()["calibration"]
    assert detector.score(test.images[:3]).probability is None


def test_calibrating_on_the_training_data_warns(bundle_copy, capsys):
    code, _, err = _calibrate(
        capsys, bundle_copy, "--data", "digits:train", "--normal-classes", NORMAL
    )
    assert code == 0
    assert "training data" in err


@pytest.mark.parametrize(("kind", "needed"), [("pixelcnn", 999), ("vae", 1998)])
def test_a_reference_too_small_for_alpha_warns(kind, needed, request, tmp_path, capsys):
    """At alpha 0.001 a few hundred images can never give p <= alpha, and the user is told so
    rather than getting a silent detector. The VAE's combined default (seven members) is
    referenced on half the images, so it needs twice as many; the PixelCNN's (one member) on all
    of them."""
    bundle_copy = tmp_path / "model.onnx"
    shutil.copy(request.getfixturevalue(f"{kind}_bundle"), bundle_copy)
    code, out, err = _calibrate(
        capsys, bundle_copy, "--data", "digits:test", "--normal-classes", NORMAL, "--alpha", "0.001"
    )
    assert code == 0
    summary = json.loads(out)
    spec = Bundle.read(bundle_copy).spec
    n = len(spec.scores[spec.default_score].reference)
    assert n < 999
    assert summary["thresholds"][spec.default_score] == float("inf")
    [warning] = summary["warnings"]
    assert f"reference of {n} images" in warning
    assert f"at least {needed} held-out normal images" in warning
    assert ("half of them" in warning) == (kind == "vae")
    assert f"calibrate: warning: {warning}" in err
    code, out, err = _calibrate(
        capsys, bundle_copy, "--data", "digits:test", "--normal-classes", NORMAL, "--alpha", "0.05"
    )
    assert json.loads(out)["warnings"] == []
    assert "warning" not in err


def test_calibrate_can_write_a_new_file(bundle_copy, tmp_path, capsys):
    before = bundle_copy.read_bytes()
    out = tmp_path / "new.onnx"
    code, _, _ = _calibrate(
        capsys,
        bundle_copy,
        "--data",
        "digits:test",
        "--out",
        out,
        "--anomalous",
        "digits:test",
        "--probability",
        "logistic",
    )
    assert code == 0
    assert bundle_copy.read_bytes() == before
    spec = Bundle.read(out).spec
    assert spec.calibration.choice["rule"] == "f1"
    assert spec.scores["nll"].probability.method == "logistic"


def test_calibrate_runs_without_importing_torch(bundle_copy):
    code = (
        "import sys; from normalcy.cli import main; "
        f"rc = main(['calibrate', {str(bundle_copy)!r}, '--data', 'digits:test', "
        "'--anomalous', 'digits:test', '--anomalous-classes', '9']); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
