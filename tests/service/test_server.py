"""Against a real `normalcy serve` process on a loopback port: end to end, Triton's own client,
hot reload by watching the folder, and draining on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time

import httpx
import numpy as np
import pytest


def _wait_for(condition, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_end_to_end_over_http(model_dir, start_server, digit_images, png):
    server = start_server(model_dir)
    files = [("images", (f"{i}.png", png(img), "image/png")) for i, img in enumerate(digit_images)]
    answer = httpx.post(
        f"{server.url}/v1/models/pixelcnn/score?heatmap=true", files=files, timeout=30
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(digit_images)
    assert all(np.asarray(r["heatmap"]).shape == (1, 8, 8) for r in results)
    bad = httpx.post(
        f"{server.url}/v1/models/pixelcnn/score",
        content=b"\x89PNG\r\n\x1a\n trunc",
        headers={"content-type": "image/png"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_image"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'normalcy_images_scored_total{model="pixelcnn"} 8.0' in metrics
    assert "CPUExecutionProvider" in server.log()  # the provider is logged


def test_the_official_triton_client_works(model_dir, start_server, digit_images):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    server = start_server(model_dir)
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("vae")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("vae")
        assert meta["inputs"][0]["datatype"] == "UINT8"

        answers = {}
        for binary in (True, False):
            tensor = httpclient.InferInput("images", list(digit_images.shape), "UINT8")
            tensor.set_data_from_numpy(digit_images, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=binary)
                for name in ("score", "p_value", "is_anomaly")
            ]
            result = client.infer(
                "vae",
                [tensor],
                outputs=outputs,
                parameters={"alpha": 0.25},
                model_version=meta["versions"][0],
            )
            answers[binary] = result
            assert (
                result.as_numpy("is_anomaly").tolist()
                == (result.as_numpy("p_value") <= 0.25).tolist()
            )
        np.testing.assert_array_equal(
            answers[True].as_numpy("score"), answers[False].as_numpy("score")
        )

        v1 = httpx.post(
            f"{server.url}/v1/models/vae/score", json={"images": digit_images.tolist()}
        ).json()
        np.testing.assert_allclose(
            answers[True].as_numpy("score"), [r["score"] for r in v1["results"]]
        )

        # All outputs, binary by default, when none are named.
        tensor = httpclient.InferInput("images", list(digit_images.shape), "UINT8")
        tensor.set_data_from_numpy(digit_images)
        assert client.infer("vae", [tensor]).as_numpy("p_value").shape == (len(digit_images),)

        wrong = httpclient.InferInput("images", list(digit_images.shape), "FP32")
        wrong.set_data_from_numpy(digit_images.astype(np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("vae", [wrong])
        assert refused.value.status() == "400"
        assert "UINT8" in str(refused.value.message())
        assert client.is_server_ready()  # still answering
    finally:
        client.close()


def test_the_triton_client_reads_v2_errors_config_and_statistics(
    model_dir, start_server, digit_images
):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    server = start_server(model_dir)
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        config = client.get_model_config("vae")
        assert config["name"] == "vae"
        assert config["input"][0]["data_type"] == "TYPE_UINT8"
        assert config["input"][0]["dims"] == list(digit_images.shape[1:])
        assert {o["name"] for o in config["output"]} >= {"score", "p_value", "is_anomaly"}
        assert config["max_batch_size"] >= 1

        tensor = httpclient.InferInput("images", list(digit_images.shape), "UINT8")
        tensor.set_data_from_numpy(digit_images)
        client.infer("vae", [tensor])
        stats = client.get_inference_statistics("vae")["model_stats"]
        assert [s["name"] for s in stats] == ["vae"]
        assert stats[0]["inference_count"] == len(digit_images)
        assert stats[0]["inference_stats"]["success"]["count"] == 1
        every = client.get_inference_statistics()["model_stats"]
        assert {s["name"] for s in every} == {"pixelcnn", "vae"}

        # Errors carry a plain string, which the client prints as "[status] message".
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_config("nope")
        assert unknown.value.status() == "404"
        assert str(unknown.value).startswith("[404] unknown model 'nope'")
        wrong = httpclient.InferInput("images", list(digit_images.shape), "FP32")
        wrong.set_data_from_numpy(digit_images.astype(np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("vae", [wrong])
        assert "UINT8" in str(refused.value)
        assert client.get_inference_statistics("vae")["model_stats"][0]["inference_count"] == 8
    finally:
        client.close()
    v1 = httpx.get(f"{server.url}/v1/models/nope").json()
    assert v1["error"]["code"] == "unknown_model"  # /v1 keeps its own shape


def test_the_watched_folder_hot_reloads(model_dir, start_server, vae_bundle):
    server = start_server(model_dir, None, "--watch-interval-s", "0.2")

    def names():
        return {
            m["name"]: m["version"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]
        }

    old_version = names()["vae"]
    shutil.copy(vae_bundle, model_dir / "third.onnx")
    _wait_for(lambda: "third" in names(), what="the new bundle to be served")

    # A bad file over a serving model: refused, counted, the old version keeps serving.
    tmp = model_dir / ".vae.onnx.tmp"
    tmp.write_bytes(b"definitely not onnx")
    os.replace(tmp, model_dir / "vae.onnx")
    _wait_for(
        lambda: re.search(
            r'normalcy_model_load_failures_total\{model="vae"\} 1',
            httpx.get(f"{server.url}/metrics").text,
        ),
        what="the load failure",
    )
    answer = httpx.post(
        f"{server.url}/v1/models/vae/score", json={"images": [np.zeros((8, 8), int).tolist()]}
    )
    assert answer.status_code == 200
    assert answer.json()["version"] == old_version
    assert "refused" in server.log()


def test_sigterm_drains_requests_in_flight(model_dir, start_server):
    server = start_server(model_dir)
    body = json.dumps({"images": [np.zeros((8, 8), int).tolist()]}).encode()
    head = (
        f"POST /v1/models/vae/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head + body[:10])  # a request in flight: its body is still arriving
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no new connections while draining
            httpx.get(f"{server.url}/v2/health/live", timeout=2)
        connection.sendall(body[10:])
        answer = connection.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"is_anomaly"' in answer
    # uvicorn re-raises the signal after a clean shutdown, so the exit status may say SIGTERM.
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "draining" in server.log()


def test_a_client_that_sends_its_whole_body_first_sees_the_413(model_dir, start_server):
    import urllib.error
    import urllib.request

    server = start_server(model_dir, {"NORMALCY_MAX_BODY_BYTES": "4096"})
    # urllib says `Connection: close` and sends all of its body before it reads the answer; a
    # body larger than the socket buffers used to end in a broken pipe.
    request = urllib.request.Request(
        f"{server.url}/v1/models/vae/score",
        data=b"x" * 20_000_000,
        headers={"Content-Type": "image/png"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert refused.value.headers["Connection"] == "close"
    assert json.loads(refused.value.read())["error"]["code"] == "body_too_large"
