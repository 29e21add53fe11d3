"""The service with a class-conditional bundle: labels pass through every scoring route (query,
JSON body, Open Inference Protocol v2 tensor) and the micro-batcher, and a missing, malformed or
unknown label is a 400 that says so."""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detectors import Detector
from service.app import create_app
from service.settings import Settings


@pytest.fixture
def client(tmp_path, conditional_pixelcnn_bundle, pixelcnn_bundle):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(conditional_pixelcnn_bundle, folder / "digits.onnx")
    shutil.copy(pixelcnn_bundle, folder / "plain.onnx")
    with TestClient(
        create_app(Settings(models_dir=folder, watch_interval_s=0)), raise_server_exceptions=False
    ) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def digits(digits_test, conditional_pixelcnn_bundle):
    data = digits_test.with_classes([0, 1, 2, 3, 4])
    images, labels = data.images[:12], data.labels[:12]
    expected = Detector.load(conditional_pixelcnn_bundle, device="cpu").score(images, labels=labels)
    return images, labels, expected


def test_model_description_says_it_is_conditional(client):
    described = client.get("/v1/models/digits").json()
    assert described["conditional"] is True
    assert described["labels"]["classes"] == [0, 1, 2, 3, 4]
    assert client.get("/v1/models/plain").json()["conditional"] is False


def test_labels_in_the_query_or_the_json_body_give_the_detectors_scores(client, digits, png):
    images, labels, expected = digits
    files = [("images", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    query = ",".join(str(y) for y in labels)
    answer = client.post(f"/v1/models/digits/score?labels={query}", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    np.testing.assert_allclose([r["score"] for r in results], expected.scores, rtol=1e-6)
    assert [r["label"] for r in results] == labels.tolist()
    body = {"images": images[:, 0].tolist(), "labels": labels.tolist()}
    answer = client.post("/v1/models/digits/score", json=body)
    np.testing.assert_allclose([r["p_value"] for r in answer.json()["results"]], expected.p_values)


@pytest.mark.parametrize(
    ("model", "query", "body_labels", "message"),
    [
        ("digits", "", None, "class-conditional"),
        ("digits", "labels=0,1", None, "one label per image"),
        ("digits", "labels=0,9,1", None, r"\[9\] out of range"),
        ("digits", "labels=a,b,c", None, "comma-separated whole numbers"),
        ("digits", "labels=0,1,2", [0, 1, 2], "labels given twice"),
        ("digits", "", "3", "labels must be a list"),
        ("plain", "labels=0,1,2", None, "not conditional"),
    ],
)
def test_bad_labels_are_a_400_saying_what_is_wrong(
    client, digits, model, query, body_labels, message
):
    images = digits[0][:3]
    body = {"images": images[:, 0].tolist()}
    if body_labels is not None:
        body["labels"] = body_labels
    answer = client.post(f"/v1/models/{model}/score?{query}", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_labels"
    assert re.search(message, answer.json()["error"]["message"])


def test_concurrent_requests_batched_together_keep_their_own_labels(client, digits):
    images, labels, expected = digits

    def one(i):
        body = {"images": [images[i, 0].tolist()], "labels": [int(labels[i])]}
        return client.post("/v1/models/digits/score", json=body).json()["results"][0]["score"]

    with ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(one, range(len(images))))
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-6)


def test_open_inference_protocol_takes_labels_as_a_second_tensor(client, digits):
    images, labels, expected = digits
    metadata = client.get("/v2/models/digits").json()
    assert {"name": "labels", "datatype": "INT64", "shape": [-1]} in metadata["inputs"]
    request = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            },
            {
                "name": "labels",
                "datatype": "INT64",
                "shape": [len(labels)],
                "data": labels.tolist(),
            },
        ]
    }
    answer = client.post("/v2/models/digits/infer", json=request)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    np.testing.assert_allclose(outputs["score"], expected.scores, rtol=1e-6)
    request["inputs"] = request["inputs"][:1]
    answer = client.post("/v2/models/digits/infer", json=request)
    assert answer.status_code == 400
    assert "two input tensors" in answer.json()["error"]  # the v2 shape: a plain string
