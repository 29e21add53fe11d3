"""Every bad input gets a 4xx and {"error": {"code", "message"}} ({"error": message, "code"} on
/v2, the Open Inference Protocol's shape); the service keeps answering."""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from detectors.bundle import Bundle, write_bundle

MAX_IMAGES = 4
MAX_BODY = 64 * 1024
MAX_PIXELS = 100 * 100


def _grey(value=7, size=8) -> list:
    return np.full((size, size), value).tolist()


def _v2(tensor: dict, **extra) -> dict:
    return {
        "json": {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [1, 1, 8, 8],
                    "data": [7] * 64,
                    **tensor,
                }
            ],
            **extra,
        }
    }


def _binary(blob: bytes) -> dict:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [1, 1, 8, 8],
                    "parameters": {"binary_data_size": 64},
                }
            ]
        }
    ).encode()
    return {
        "content": header + blob,
        "headers": {"inference-header-content-length": str(len(header))},
    }


def _encoded(format: str, frames: int = 1, **options) -> bytes:
    """An 8x8 grey image encoded by Pillow (several frames or pages when asked)."""
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=format, save_all=frames > 1, append_images=images[1:], **options)
    return buffer.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"


def _upload(data: bytes, name: str = "x.img") -> dict:
    return {"files": [("images", (name, data, "application/octet-stream"))]}


# (case, method, path, request builder (png) -> httpx kwargs, status, code)
CASES = [
    ("empty body", "post", "/v1/models/vae/score", lambda png: {"content": b""}, 400, "empty_body"),
    (
        "empty multipart file",
        "post",
        "/v1/models/vae/score",
        lambda png: {"files": [("images", ("e.png", b"", "image/png"))]},
        400,
        "empty_image",
    ),
    (
        "not an image",
        "post",
        "/v1/models/vae/score",
        lambda png: {"files": [("images", ("a.png", b"hello, not a picture", "image/png"))]},
        400,
        "invalid_image",
    ),
    (
        "truncated PNG",
        "post",
        "/v1/models/vae/score",
        lambda png: {"files": [("images", ("t.png", png(np.full((40, 40), 9, np.uint8))[:60]))]},
        400,
        "invalid_image",
    ),
    (
        "a PNG signature and then junk",
        "post",
        "/v1/models/vae/score",
        lambda png: _upload(b"\x89PNG\r\n\x1a\n not really", "x.png"),
        400,
        "invalid_image",
    ),
    (
        "EPS (Ghostscript's format)",
        "post",
        "/v1/models/vae/score",
        lambda png: _upload(EPS, "x.eps"),
        415,
        "unsupported_image_format",
    ),
    (
        "GIF",
        "post",
        "/v1/models/vae/score",
        lambda png: _upload(_encoded("GIF"), "x.gif"),
        415,
        "unsupported_image_format",
    ),
    (
        "EPS as the body",
        "post",
        "/v1/models/vae/score",
        lambda png: {"content": EPS, "headers": {"content-type": "image/png"}},
        415,
        "unsupported_image_format",
    ),
    (
        "multi-page TIFF",
        "post",
        "/v1/models/vae/score",
        lambda png: _upload(_encoded("TIFF", frames=3), "x.tif"),
        400,
        "multi_frame_image",
    ),
    (
        "animated PNG",
        "post",
        "/v1/models/vae/score",
        lambda png: _upload(_encoded("PNG", frames=2), "x.png"),
        400,
        "multi_frame_image",
    ),
    (
        "unknown model",
        "post",
        "/v1/models/nope/score",
        lambda png: {"json": {"images": [_grey()]}},
        404,
        "unknown_model",
    ),
    (
        "unknown score",
        "post",
        "/v1/models/vae/score?score=nope",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "unknown_score",
    ),
    (
        "unknown query parameter",
        "post",
        "/v1/models/vae/score?alhpa=0.1",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "unknown_parameter",
    ),
    (
        "heatmap neither true nor false",
        "post",
        "/v1/models/vae/score?heatmap=maybe",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "invalid_request",
    ),
    (
        "alpha zero",
        "post",
        "/v1/models/vae/score?alpha=0",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "invalid_alpha",
    ),
    (
        "alpha one",
        "post",
        "/v1/models/vae/score?alpha=1",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "invalid_alpha",
    ),
    (
        "alpha not a number",
        "post",
        "/v1/models/vae/score?alpha=lots",
        lambda png: {"json": {"images": [_grey()]}},
        400,
        "invalid_alpha",
    ),
    (
        "NaN pixels",
        "post",
        "/v1/models/vae/score",
        lambda png: {
            "content": json.dumps({"images": [[[float("nan")] * 8] * 8]}),
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_pixels",
    ),
    (
        "pixels above 255",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [_grey(300)]}},
        400,
        "invalid_pixels",
    ),
    (
        "negative pixels",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [_grey(-1)]}},
        400,
        "invalid_pixels",
    ),
    (
        "fractional pixels",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [np.full((8, 8), 0.5).tolist()]}},
        400,
        "invalid_pixels",
    ),
    (
        "strings as pixels",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [[["a"] * 8] * 8]}},
        400,
        "invalid_pixels",
    ),
    (
        "ragged array",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [[[1, 2], [3]]]}},
        400,
        "invalid_pixels",
    ),
    (
        "array of the wrong shape",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [_grey(size=9)]}},
        400,
        "invalid_shape",
    ),
    (
        "too many images (JSON)",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [_grey()] * (MAX_IMAGES + 1)}},
        413,
        "too_many_images",
    ),
    (
        "too many images (multipart)",
        "post",
        "/v1/models/vae/score",
        lambda png: {
            "files": [
                ("images", (f"{i}.png", png(np.zeros((8, 8), np.uint8))))
                for i in range(MAX_IMAGES + 1)
            ]
        },
        413,
        "too_many_images",
    ),
    (
        "body too large",
        "post",
        "/v1/models/vae/score",
        lambda png: {"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "image/png"}},
        413,
        "body_too_large",
    ),
    (
        "decompression bomb",
        "post",
        "/v1/models/vae/score",
        lambda png: {"files": [("images", ("big.png", png(np.zeros((200, 200), np.uint8))))]},
        413,
        "image_too_large",
    ),
    (
        "unsupported content type",
        "post",
        "/v1/models/vae/score",
        lambda png: {"content": b"images=1", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    (
        "compressed body",
        "post",
        "/v1/models/vae/score",
        lambda png: {
            "content": b"\x1f\x8b",
            "headers": {"content-type": "image/png", "content-encoding": "gzip"},
        },
        415,
        "unsupported_encoding",
    ),
    (
        "invalid JSON",
        "post",
        "/v1/models/vae/score",
        lambda png: {"content": b"{images: ", "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "JSON without images",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"image": []}},
        400,
        "invalid_request",
    ),
    (
        "JSON with no images",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": []}},
        400,
        "no_images",
    ),
    (
        "more JSON values than the images could hold",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [[0] * 5000]}},
        413,
        "too_many_values",
    ),
    (
        "a number of 5000 digits",
        "post",
        "/v1/models/vae/score",
        lambda png: {
            "content": b'{"images": [[' + b"7" * 5000 + b"]]}",
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_json",
    ),
    (
        "invalid base64",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": ["%%%"]}},
        400,
        "invalid_base64",
    ),
    (
        "base64 of junk",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": [base64.b64encode(b"junk").decode()]}},
        400,
        "invalid_image",
    ),
    (
        "a server path instead of an image",
        "post",
        "/v1/models/vae/score",
        lambda png: {"json": {"images": ["/etc/passwd"]}},
        400,
        "invalid_base64",
    ),
    (
        "multipart without files",
        "post",
        "/v1/models/vae/score",
        lambda png: {"files": {"field": (None, "value")}},
        400,
        "no_images",
    ),
    (
        "form-encoded body",
        "post",
        "/v1/models/vae/score",
        lambda png: {"data": {"field": "value"}},
        415,
        "unsupported_media_type",
    ),
    (
        "broken multipart",
        "post",
        "/v1/models/vae/score",
        lambda png: {
            "content": b"--zz\r\nbroken",
            "headers": {"content-type": "multipart/form-data; boundary=zz"},
        },
        400,
        "no_images",
    ),
    (
        "v2 wrong datatype",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"datatype": "FP32"}),
        400,
        "invalid_tensor",
    ),
    (
        "v2 wrong shape",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"shape": [1, 1, 9, 8], "data": [7] * 72}),
        400,
        "invalid_tensor",
    ),
    (
        "v2 data does not fill the shape",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"data": [7] * 63}),
        400,
        "invalid_tensor",
    ),
    (
        "v2 wrong input name",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"name": "x"}),
        400,
        "invalid_tensor",
    ),
    (
        "v2 NaN data",
        "post",
        "/v2/models/vae/infer",
        lambda png: {
            "content": json.dumps(_v2({"data": [float("nan")] * 64})["json"]),
            "headers": {"content-type": "application/json"},
        },
        400,
        "invalid_pixels",
    ),
    (
        "v2 out-of-range data",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"data": [256] * 64}),
        400,
        "invalid_pixels",
    ),
    (
        "v2 too many images",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"shape": [MAX_IMAGES + 1, 1, 8, 8], "data": [7] * 64 * (MAX_IMAGES + 1)}),
        413,
        "too_many_images",
    ),
    (
        "v2 more data values than the images could hold",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"data": [7] * 5000}),
        413,
        "too_many_values",
    ),
    (
        "v2 outputs not a list",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, outputs=5),
        400,
        "invalid_request",
    ),
    (
        "v2 tensor parameters not an object",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({"parameters": 5}),
        400,
        "invalid_request",
    ),
    (
        "v2 output name not a string",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, outputs=[{"name": ["score"]}]),
        400,
        "invalid_request",
    ),
    (
        "v2 id not a string",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, id=7),
        400,
        "invalid_request",
    ),
    (
        "v2 binary_data_output not a boolean",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, parameters={"binary_data_output": "yes"}),
        400,
        "invalid_request",
    ),
    (
        "v2 no inputs",
        "post",
        "/v2/models/vae/infer",
        lambda png: {"json": {"inputs": []}},
        400,
        "invalid_tensor",
    ),
    (
        "v2 unknown output",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, outputs=[{"name": "logits"}]),
        400,
        "invalid_request",
    ),
    (
        "v2 alpha out of range",
        "post",
        "/v2/models/vae/infer",
        lambda png: _v2({}, parameters={"alpha": 1.5}),
        400,
        "invalid_alpha",
    ),
    (
        "v2 binary size mismatch",
        "post",
        "/v2/models/vae/infer",
        lambda png: _binary(bytes(10)),
        400,
        "invalid_tensor",
    ),
    (
        "v2 header length past the body",
        "post",
        "/v2/models/vae/infer",
        lambda png: {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
        400,
        "invalid_request",
    ),
    (
        "v2 empty body",
        "post",
        "/v2/models/vae/infer",
        lambda png: {"content": b""},
        400,
        "empty_body",
    ),
    (
        "v2 unknown version",
        "get",
        "/v2/models/vae/versions/123",
        lambda png: {},
        404,
        "unknown_version",
    ),
    ("v2 unknown model", "get", "/v2/models/nope", lambda png: {}, 404, "unknown_model"),
    ("no such route", "get", "/v1/nothing-here", lambda png: {}, 404, "not_found"),
    ("wrong method", "get", "/v1/models/vae/score", lambda png: {}, 405, "method_not_allowed"),
]


@pytest.fixture(scope="module")
def strict_client(tmp_path_factory, pixelcnn_bundle, vae_bundle):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    folder = tmp_path_factory.mktemp("models")
    shutil.copy(pixelcnn_bundle, folder / "pixelcnn.onnx")
    shutil.copy(vae_bundle, folder / "vae.onnx")
    settings = Settings(
        models_dir=folder,
        watch_interval_s=0,
        max_images_per_request=MAX_IMAGES,
        max_body_bytes=MAX_BODY,
        max_pixels=MAX_PIXELS,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("case", "method", "path", "build", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_gets_a_4xx_with_an_error_body(
    strict_client, png, case, method, path, build, status, code
):
    answer = strict_client.request(method.upper(), path, **build(png))
    assert answer.status_code == status, answer.text
    body = answer.json()
    if path.startswith("/v2/"):
        error = {"code": body["code"], "message": body["error"]}
    else:
        error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    if code == "unsupported_image_format":  # the reason, and what is accepted
        assert "not accepted" in error["message"]
        assert "PNG" in error["message"]
    # ... and the service still answers.
    good = strict_client.post("/v1/models/vae/score", json={"images": [_grey()]})
    assert good.status_code == 200, good.text


def test_no_bad_input_answer_was_a_server_error(strict_client):
    metrics = strict_client.get("/metrics").text
    assert 'code="500"' not in metrics


def test_refused_size_conversion_says_why(tmp_path, vae_bundle, png):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    bundle = Bundle.read(vae_bundle)
    strict = replace(bundle.spec.preprocessing, resize="refuse", color="refuse")
    write_bundle(
        bundle.model_bytes, replace(bundle.spec, preprocessing=strict), tmp_path / "strict.onnx"
    )
    with TestClient(create_app(Settings(models_dir=tmp_path, watch_interval_s=0))) as client:
        for image, words in [
            (np.zeros((9, 9), np.uint8), "size"),
            (np.zeros((3, 8, 8), np.uint8), "colour"),
        ]:
            answer = client.post(
                "/v1/models/strict/score", files=[("images", ("x.png", png(image)))]
            )
            assert answer.status_code == 400
            assert answer.json()["error"]["code"] == "unsupported_image"
            assert words in answer.json()["error"]["message"]
        assert (
            client.post(
                "/v1/models/strict/score",
                files=[("images", ("x.png", png(np.zeros((8, 8), np.uint8))))],
            ).status_code
            == 200
        )


def test_a_heat_map_is_refused_when_the_bundle_has_none(tmp_path, vae_bundle):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    bundle = Bundle.read(vae_bundle)
    write_bundle(bundle.model_bytes, replace(bundle.spec, heatmap=None), tmp_path / "flat.onnx")
    with TestClient(create_app(Settings(models_dir=tmp_path, watch_interval_s=0))) as client:
        answer = client.post("/v1/models/flat/score?heatmap=true", json={"images": [_grey()]})
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "heatmap_unavailable"
        assert client.post("/v1/models/flat/score", json={"images": [_grey()]}).status_code == 200


@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP", "TIFF"])
def test_every_accepted_format_scores(strict_client, format):
    answer = strict_client.post("/v1/models/vae/score", **_upload(_encoded(format), "x"))
    assert answer.status_code == 200, answer.text
