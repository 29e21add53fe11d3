"""The plain scoring API, through FastAPI's test client and real ONNX Runtime sessions."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from detectors import Detector
from detectors.bundle import Bundle, write_bundle
from service.app import create_app
from service.schemas import ScoreResponse
from service.settings import Settings


def test_multipart_upload_scores_every_image_like_the_detector(
    client, model_dir, digit_images, png
):
    files = [("images", (f"d{i}.png", png(img), "image/png")) for i, img in enumerate(digit_images)]
    answer = client.post("/v1/models/vae/score", files=files)
    assert answer.status_code == 200, answer.text
    body = ScoreResponse.model_validate(answer.json())
    expected = Detector.load(model_dir / "vae.onnx", device="cpu").score(digit_images)
    assert [r.filename for r in body.results] == [f"d{i}.png" for i in range(len(digit_images))]
    np.testing.assert_allclose([r.score for r in body.results], expected.scores, rtol=1e-6)
    np.testing.assert_allclose([r.p_value for r in body.results], expected.p_values)
    assert body.model == "vae"
    assert body.version == Detector.load(model_dir / "vae.onnx").version


def test_each_answer_follows_the_decision_rule(client, digit_images):
    images = [img.tolist() for img in digit_images]
    body = client.post("/v1/models/pixelcnn/score?alpha=0.3", json={"images": images}).json()
    for result in body["results"]:
        assert result["alpha"] == 0.3
        assert result["score_name"] == body["score_name"]
        assert 0 < result["p_value"] <= 1
        assert result["is_anomaly"] == (result["p_value"] <= 0.3)
        assert result["is_anomaly"] == (result["score"] > result["threshold"])


@pytest.mark.parametrize("form", ["base64", "array_chw", "array_hw", "raw_body"])
def test_every_input_form_gives_the_same_score(client, digit_images, form, png):
    image = digit_images[0]
    if form == "base64":
        answer = client.post(
            "/v1/models/vae/score", json={"images": [base64.b64encode(png(image)).decode()]}
        )
    elif form == "array_chw":
        answer = client.post("/v1/models/vae/score", json={"images": [image.tolist()]})
    elif form == "array_hw":
        answer = client.post("/v1/models/vae/score", json={"images": [image[0].tolist()]})
    else:
        answer = client.post(
            "/v1/models/vae/score", content=png(image), headers={"content-type": "image/png"}
        )
    assert answer.status_code == 200, answer.text
    reference = client.post("/v1/models/vae/score", json={"images": [image.tolist()]}).json()
    assert answer.json()["results"][0]["score"] == pytest.approx(reference["results"][0]["score"])


def test_score_and_heatmap_can_be_chosen_per_request(client, digit_images):
    body = client.post(
        "/v1/models/pixelcnn/score?score=nll&heatmap=true",
        json={"images": [digit_images[0].tolist()]},
    ).json()
    assert body["score_name"] == "nll"
    heatmap = np.asarray(body["results"][0]["heatmap"])
    assert heatmap.shape == (1, 8, 8)
    assert np.all(np.isfinite(heatmap))
    assert body["heatmap_units"] == "z-score"
    plain = client.post(
        "/v1/models/pixelcnn/score", json={"images": [digit_images[0].tolist()]}
    ).json()
    assert "heatmap" not in plain["results"][0]


def test_other_sizes_and_colour_modes_are_converted(client, digit_images, png):
    big_rgb = np.repeat(np.kron(digit_images[0][0], np.ones((4, 4), np.uint8))[None], 3, axis=0)
    answer = client.post("/v1/models/vae/score", files=[("images", ("big.png", png(big_rgb)))])
    assert answer.status_code == 200, answer.text


def test_a_tiny_alpha_answers_a_null_threshold_and_no_anomalies(client, digit_images):
    body = client.post(
        "/v1/models/vae/score?alpha=0.0001", json={"images": [digit_images[0].tolist()]}
    )
    assert body.status_code == 200
    assert body.json()["threshold"] is None
    assert body.json()["results"][0]["is_anomaly"] is False


def test_models_are_listed_with_version_and_calibration(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"pixelcnn", "vae"}
    detail = client.get("/v1/models/pixelcnn").json()
    assert detail["version"] == models["pixelcnn"]["version"] == detail["sha256"][:12]
    assert detail["provider"] == "CPUExecutionProvider"
    assert detail["calibration"]["alpha"] == 0.01
    for name in ("pixelcnn", "vae"):
        detail = client.get(f"/v1/models/{name}").json()
        for spec in detail["scores"].values():
            assert "reference" not in spec
            assert "member_references" not in spec
            histogram = spec["reference_histogram"]
            # Every reference holds every calibration image; the VAE's combined score's members
            # inside the combination hold the validation split, and only their sizes are shown.
            assert sum(histogram["counts"]) == spec["reference_size"]
            assert spec["reference_size"] == detail["calibration"]["n_reference"]
        combined = detail["scores"]["combined"]
        if name == "vae":
            sizes = combined["member_reference_sizes"]
            assert set(sizes) == set(combined["statistics"])
            assert set(sizes.values()) == {detail["training"]["n_validation"]}
        else:  # one member: its own reference serves
            assert "member_reference_sizes" not in combined


def test_docs_and_openapi_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}/score" in paths
    assert "/v2/models/{name}/infer" in paths


@pytest.mark.parametrize("page", ["/docs"])
def test_the_docs_pages_load_nothing_from_outside(client, page):
    import re

    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html.text)
    urls += re.findall(r"""url\s*:\s*["']([^"']+)["']""", html.text)  # the spec, in the script
    assert any(u.endswith(".js") for u in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        assert client.get(url).status_code == 200, url
    assert "cdn" not in html.text.lower()
    assert "fonts.googleapis" not in html.text


def test_the_root_is_left_to_the_web_page(client):
    # Without service/static/index.html the root is free (the web page's helper adds it).
    from service.app import STATIC_DIR

    if not (STATIC_DIR / "index.html").exists():
        assert client.get("/").status_code == 404


def test_bundles_with_a_probability_map_answer_p_anomaly(tmp_path, vae_bundle, digit_images):
    from fastapi.testclient import TestClient

    from detectors.bundle import Bundle, write_bundle
    from detectors.supervised import fit_probability_map
    from service.app import create_app
    from service.settings import Settings

    bundle = Bundle.read(vae_bundle)
    name = bundle.spec.default_score
    reference = bundle.reference(name)
    mapping = fit_probability_map(reference, reference + 1.0)
    scores = {**bundle.spec.scores, name: replace(bundle.spec.scores[name], probability=mapping)}
    write_bundle(bundle.model_bytes, replace(bundle.spec, scores=scores), tmp_path / "mapped.onnx")
    with TestClient(create_app(Settings(models_dir=tmp_path, watch_interval_s=0))) as client:
        body = client.post("/v1/models/mapped/score", json={"images": digit_images.tolist()}).json()
    probabilities = [r["probability"] for r in body["results"]]
    assert all(0.0 <= p <= 1.0 for p in probabilities)


@pytest.mark.parametrize("show", [False, True])
def test_server_folders_stay_out_of_answers_unless_asked(tmp_path, vae_bundle, show):
    bundle = Bundle.read(vae_bundle)
    spec = bundle.spec
    spec = replace(
        spec,
        calibration=replace(spec.calibration, data="idx:/srv/secret/t10k.gz (calibration split)"),
        training=replace(spec.training, data="/srv/secret/normal-images/"),
    )
    write_bundle(bundle.model_bytes, spec, tmp_path / "vae.onnx")
    settings = Settings(models_dir=tmp_path, watch_interval_s=0, show_data_paths=show)
    with TestClient(create_app(settings)) as client:
        listing = client.get("/v1/models").text
        detail = client.get("/v1/models/vae").json()
    assert ("/srv/secret" in listing + json.dumps(detail)) is show
    if not show:  # the file and folder names stay: they say what the data was
        assert detail["calibration"]["data"] == "idx:t10k.gz (calibration split)"
        assert detail["training"]["data"] == "normal-images"


def test_the_pixel_limit_follows_the_models_input_unless_set(make_client, png):
    # The models take 8x8: by default an image may hold 64 x 64 pixels, 64 times their input.
    def status(client, side: int) -> int:
        image = png(np.zeros((side, side), np.uint8))
        return client.post("/v1/models/vae/score", files=[("images", ("x.png", image))]).status_code

    default = make_client()
    assert status(default, 64) == 200
    assert status(default, 65) == 413
    assert status(make_client(max_pixels=100 * 100), 100) == 200  # the operator's own limit


def test_a_server_asked_for_cuda_without_it_scores_on_cpu_and_logs_why(
    make_client, digit_images, caplog
):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with caplog.at_level("WARNING", logger="detectors.runtime"):
        client = make_client(device="cuda")
    assert "falling back to CPU" in caplog.text
    answer = client.post("/v1/models/vae/score", json={"images": [digit_images[0].tolist()]})
    assert answer.status_code == 200, answer.text
