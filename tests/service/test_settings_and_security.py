"""Settings refuse bad values at start-up; API and admin keys guard what they should."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from normalcy.cli import main
from service.settings import Settings

IMAGE = {"images": [np.zeros((8, 8), int).tolist()]}


@pytest.mark.parametrize(
    "bad",
    [
        {"port": 0},
        {"port": 70000},
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"max_queue_images": 0},
        {"max_images_per_request": 2000},  # more than the queue holds
        {"max_body_bytes": 10},
        {"device": "tpu"},
        {"api_key": "short"},
        {"drift_min_samples": 5000},
        {"watch_interval_s": -1},
        {"log_level": "chatty"},
        {"unknown_setting": 1},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_settings_are_refused(tmp_path, bad):
    with pytest.raises(ValidationError):
        Settings(models_dir=tmp_path, **bad)


def test_a_missing_model_folder_is_refused(tmp_path):
    with pytest.raises(ValidationError, match="directory"):
        Settings(models_dir=tmp_path / "absent")


def test_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMALCY_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("NORMALCY_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("NORMALCY_API_KEY", "")  # blank means no key, as compose files write it
    settings = Settings()
    assert settings.max_batch_size == 8
    assert settings.api_key is None


def test_serve_exits_with_the_reason_on_bad_settings(tmp_path, capsys):
    assert main(["serve", "--models", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err


def test_scoring_needs_the_api_key_when_one_is_set(make_client):
    client = make_client(api_key="sesame-sesame")
    refused = client.post("/v1/models/vae/score", json=IMAGE)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    wrong = client.post("/v1/models/vae/score", json=IMAGE, headers={"X-API-Key": "nope-nope"})
    assert wrong.status_code == 401
    assert (
        client.post(
            "/v1/models/vae/score", json=IMAGE, headers={"X-API-Key": "sesame-sesame"}
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/v1/models/vae/score", json=IMAGE, headers={"Authorization": "Bearer sesame-sesame"}
        ).status_code
        == 200
    )
    assert client.post("/v2/models/vae/infer", json={}).status_code == 401
    # Probes, metadata and metrics stay open for orchestrators and Prometheus.
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v1/models"):
        assert client.get(path).status_code == 200


def test_admin_endpoints_are_off_without_an_admin_key(client):
    answer = client.post("/v1/admin/reload")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "admin_disabled"


def test_admin_endpoints_need_the_admin_key(make_client):
    client = make_client(admin_key="admin-admin", api_key="scorer-scorer")
    assert client.post("/v1/admin/reload").status_code == 401
    # The scoring key is not the admin key.
    assert (
        client.post("/v1/admin/reload", headers={"X-Admin-Key": "scorer-scorer"}).status_code == 401
    )
    answer = client.post("/v1/admin/reload", headers={"X-Admin-Key": "admin-admin"})
    assert answer.status_code == 200
    assert sorted(answer.json()["unchanged"]) == ["pixelcnn", "vae"]


def test_onnx_runtime_leaves_one_cpu_to_the_event_loop(tmp_path):
    import os

    cpus = len(os.sched_getaffinity(0))
    assert Settings(models_dir=tmp_path).inference_threads == cpus
    assert Settings(models_dir=tmp_path, threads=3).inference_threads == 3
