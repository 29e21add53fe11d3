"""The OpenAPI description: complete enough that generated clients and schemathesis agree with
what the service does. The schemathesis run itself is slow (`make test-slow`)."""

from __future__ import annotations

import sys

import httpx
import pytest

SCORING = [
    ("/v1/models/{name}/score", "post"),
    ("/v2/models/{name}/infer", "post"),
    ("/v2/models/{name}/versions/{version}/infer", "post"),
]


def test_v2_routes_document_their_errors_and_the_inference_body(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        if not path.startswith("/v2/models/{name}"):
            continue
        for method, operation in operations.items():
            assert "404" in operation["responses"], (method, path)
            assert "V2ErrorResponse" in str(operation["responses"]["404"]), (method, path)
    for path, method in SCORING[1:]:
        operation = paths[path][method]
        assert {"400", "401", "413", "415", "429", "503"} <= set(operation["responses"])
        body = operation["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"]["required"] == ["inputs"]
        assert "application/octet-stream" in body["content"]
    assert "503" in paths["/v2/health/ready"]["get"]["responses"]


def test_multipart_images_are_required(client):
    score = client.get("/openapi.json").json()["paths"]["/v1/models/{name}/score"]["post"]
    multipart = score["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["required"] == ["images"]
    assert score["requestBody"]["required"] is True


@pytest.mark.parametrize("key", [None, "scoring-key-123"])
def test_security_schemes_describe_the_api_key(make_client, key):
    schema = make_client(api_key=key).get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["APIKey"] == {**schemes["APIKey"], "type": "apiKey", "in": "header"}
    assert schemes["APIKey"]["name"] == "X-API-Key"
    assert schemes["Bearer"]["scheme"] == "bearer"
    for path, method in SCORING:  # required only when the server has a key
        security = schema["paths"][path][method].get("security")
        assert security == ([{"APIKey": []}, {"Bearer": []}] if key else None)


SCHEMATHESIS_CONFIG = """\
[parameters]
"path.name" = "vae"
"path.version" = "{version}"

# A schema-valid request can still not fit the model its path names (tensor shape and name, an
# image that does not decode): the service answers 400/413/415 with the reason.
[[operations]]
include-path-regex = "/(score|infer)$"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "404", "413", "415", "429",
]
"""


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_all_checks(model_dir, start_server, tmp_path):
    pytest.importorskip("schemathesis")
    import subprocess

    keys = {"NORMALCY_API_KEY": "scoring-key-123", "NORMALCY_ADMIN_KEY": "admin-key-1234"}
    server = start_server(model_dir, keys)
    version = httpx.get(f"{server.url}/v2/models/vae").json()["versions"][0]
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(version=version))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--generation-deterministic",
            "-H",
            f"X-API-Key: {keys['NORMALCY_API_KEY']}",
            "-H",
            f"X-Admin-Key: {keys['NORMALCY_ADMIN_KEY']}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its report folder lands there, not in the work tree
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout
