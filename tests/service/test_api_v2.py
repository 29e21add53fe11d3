"""The Open Inference Protocol v2 through the test client: JSON and binary tensors, metadata."""

from __future__ import annotations

import json

import numpy as np


def _infer_json(images: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ],
        **extra,
    }


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in client.get("/v2").json()["extensions"]


def test_model_metadata_names_the_tensors(client):
    meta = client.get("/v2/models/pixelcnn").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 8, 8]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "score": "FP64",
        "p_value": "FP64",
        "is_anomaly": "BOOL",
        "heatmap": "FP32",
    }
    version = meta["versions"][0]
    assert client.get(f"/v2/models/pixelcnn/versions/{version}").json() == meta
    assert client.get("/v2/models/pixelcnn/ready").json()["ready"] is True


def test_json_inference_matches_the_v1_answer(client, digit_images):
    answer = client.post("/v2/models/vae/infer", json=_infer_json(digit_images, id="req-7"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert body["id"] == "req-7"
    assert set(outputs) == {"score", "p_value", "is_anomaly"}
    assert outputs["score"]["shape"] == [len(digit_images)]
    v1 = client.post("/v1/models/vae/score", json={"images": digit_images.tolist()}).json()
    np.testing.assert_allclose(outputs["score"]["data"], [r["score"] for r in v1["results"]])
    assert outputs["is_anomaly"]["data"] == [r["is_anomaly"] for r in v1["results"]]
    assert body["model_version"] == v1["version"]


def test_grey_images_may_drop_the_channel_axis(client, digit_images):
    answer = client.post("/v2/models/vae/infer", json=_infer_json(digit_images[:, 0]))
    assert answer.status_code == 200, answer.text


def test_binary_tensors_in_and_out(client, digit_images):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": list(digit_images.shape),
                    "parameters": {"binary_data_size": digit_images.size},
                }
            ],
            "outputs": [
                {"name": "p_value", "parameters": {"binary_data": True}},
                {"name": "heatmap", "parameters": {"binary_data": True}},
                {"name": "is_anomaly", "parameters": {"binary_data": False}},
            ],
            "parameters": {"alpha": 0.2, "score": "nll"},
        }
    ).encode()
    answer = client.post(
        "/v2/models/pixelcnn/infer",
        content=header + digit_images.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status_code == 200, answer.text
    size = int(answer.headers["Inference-Header-Content-Length"])
    head = json.loads(answer.content[:size])
    assert head["parameters"]["score_name"] == "nll"
    assert head["parameters"]["alpha"] == 0.2
    outputs = {o["name"]: o for o in head["outputs"]}
    blob = answer.content[size:]
    n_p = outputs["p_value"]["parameters"]["binary_data_size"]
    p_values = np.frombuffer(blob[:n_p], np.float64)
    heatmap = np.frombuffer(blob[n_p:], np.float32).reshape(outputs["heatmap"]["shape"])
    assert heatmap.shape == digit_images.shape
    assert outputs["is_anomaly"]["data"] == (p_values <= 0.2).tolist()
