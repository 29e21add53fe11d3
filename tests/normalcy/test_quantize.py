"""`normalcy quantize` end to end: an int8 bundle that `normalcy serve` and `normalcy score` use
unchanged, and a refusal (exit 2, nothing written) when the parity is over budget."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detectors import Detector
from detectors.bundle import Bundle
from normalcy.cli import main
from service.app import create_app
from service.settings import Settings
from tests.jobs.cli import score

NORMAL = ["--data", "digits:test", "--normal-classes", "0,1,2,3,4", "--range-images", "64"]


@pytest.fixture(scope="module")
def int8_pixelcnn(pixelcnn_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantize") / "pixelcnn-int8.onnx"
    argv = ["quantize", str(pixelcnn_bundle), *NORMAL, "--out", str(out), "--no-search"]
    assert main([*argv, "--max-mean-delta-bits-per-dim", "1"]) == 0
    return out


def test_quantize_writes_an_int8_bundle_and_reports_it(int8_pixelcnn, pixelcnn_bundle, capsys):
    assert main(["info", str(int8_pixelcnn)]) == 0
    meta = json.loads(capsys.readouterr().out)["metadata"]
    assert meta["precision"]["weights"] == "int8"
    assert meta["precision"]["source_sha256"] == Bundle.read(pixelcnn_bundle).sha256
    assert meta["precision"]["parity"]["data"] == "digits:test classes [0, 1, 2, 3, 4]"
    assert meta["calibration"]["data_fingerprint"]


def test_a_graph_over_budget_is_refused_and_nothing_is_written(pixelcnn_bundle, tmp_path, capsys):
    out = tmp_path / "refused.onnx"
    argv = ["quantize", str(pixelcnn_bundle), *NORMAL, "--out", str(out), "--no-search"]
    assert main([*argv, "--max-mean-delta-bits-per-dim", "0"]) == 2
    assert "over the parity budget" in capsys.readouterr().err
    assert not out.exists()


def test_normalcy_score_uses_the_int8_bundle(int8_pixelcnn, tmp_path, digits_test):
    images = tmp_path / "digits.npy"
    np.save(images, digits_test.images[:16])
    rows = score(int8_pixelcnn, [images], tmp_path / "results.csv")
    expected = Detector.load(int8_pixelcnn, device="cpu").score(digits_test.images[:16])
    np.testing.assert_allclose([float(r["p_value"]) for r in rows], expected.p_values)


def test_normalcy_serve_serves_the_int8_bundle(int8_pixelcnn, tmp_path, digits_test):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(int8_pixelcnn, models / "pixelcnn.onnx")
    settings = Settings(models_dir=models, watch_interval_s=0)
    images = digits_test.images[:4]
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/models/pixelcnn/score", json={"images": images.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    detector = Detector.load(int8_pixelcnn, device="cpu")
    assert body["version"] == detector.version
    expected = detector.score(images)
    np.testing.assert_allclose([r["score"] for r in body["results"]], expected.scores, rtol=1e-6)
