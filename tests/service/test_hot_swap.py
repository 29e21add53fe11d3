"""Models change without downtime: reload swaps atomically, bad files are refused, old ones serve.

Also back-pressure and draining, driven concurrently through the ASGI app in one event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import httpx
import numpy as np

from detectors.bundle import Bundle
from service.app import create_app
from service.settings import Settings

ADMIN = {"X-Admin-Key": "admin-admin"}
IMAGE = {"images": [np.zeros((8, 8), int).tolist()]}


def _replace(target, source_bytes: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(source_bytes)
    os.replace(tmp, target)


def _metric(client, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_reload_swaps_in_a_changed_bundle(make_client, model_dir, pixelcnn_bundle):
    client = make_client(admin_key="admin-admin")
    old = client.get("/v1/models/vae").json()["version"]
    _replace(model_dir / "vae.onnx", pixelcnn_bundle.read_bytes())
    report = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert report["loaded"] == ["vae"]
    new = client.get("/v1/models/vae").json()
    assert new["version"] == Bundle.read(pixelcnn_bundle).version != old
    assert client.post("/v1/models/vae/score", json=IMAGE).json()["version"] == new["version"]
    assert _metric(client, 'normalcy_model_reloads_total{model="vae"}') == 1
    metrics = client.get("/metrics").text
    assert f'version="{old}"' not in metrics  # the old model_info series is gone


def test_a_bad_bundle_is_refused_and_the_old_model_keeps_serving(make_client, model_dir):
    client = make_client(admin_key="admin-admin")
    old = client.get("/v1/models/vae").json()["version"]
    _replace(model_dir / "vae.onnx", b"this is not an ONNX file at all")
    report = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert "vae" in report["failed"]
    assert report["loaded"] == []
    answer = client.post("/v1/models/vae/score", json=IMAGE)
    assert answer.status_code == 200
    assert answer.json()["version"] == old
    assert _metric(client, 'normalcy_model_load_failures_total{model="vae"}') == 1


def test_new_bundles_appear_and_removed_ones_go(make_client, model_dir, vae_bundle):
    client = make_client(admin_key="admin-admin")
    shutil.copy(vae_bundle, model_dir / "second.onnx")
    (model_dir / "pixelcnn.onnx").unlink()
    report = client.post("/v1/admin/reload", headers=ADMIN).json()
    assert report["loaded"] == ["second"]
    assert report["removed"] == ["pixelcnn"]
    assert client.post("/v1/models/second/score", json=IMAGE).status_code == 200
    assert client.post("/v1/models/pixelcnn/score", json=IMAGE).status_code == 404
    assert "pixelcnn" not in client.get("/metrics").text.split("normalcy_model_info", 1)[1]


def test_a_bad_bundle_at_start_up_does_not_stop_the_others(make_client, model_dir):
    (model_dir / "broken.onnx").write_bytes(b"\x08\x07garbage")
    (model_dir / "notes.txt").write_text("not a bundle, ignored")
    client = make_client()
    assert client.get("/v2/health/ready").status_code == 200
    assert sorted(m["name"] for m in client.get("/v1/models").json()["models"]) == [
        "pixelcnn",
        "vae",
    ]
    assert _metric(client, 'normalcy_model_load_failures_total{model="broken"}') == 1


def test_an_empty_folder_is_alive_but_not_ready(tmp_path):
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings(models_dir=tmp_path, watch_interval_s=0))) as client:
        assert client.get("/v2/health/live").status_code == 200
        answer = client.get("/v2/health/ready")
        assert answer.status_code == 503
        assert answer.json()["code"] == "not_ready"  # the v2 shape: {"error": message, "code"}


# --- concurrency, in one event loop ------------------------------------------------------------
async def _with_app(settings: Settings, body):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await body(app, client)


# A request announced to the batcher but still "reading its body" makes a batch wait for it (up to
# max_wait_ms): the tests use one to hold requests in the queue.


def test_requests_in_flight_finish_on_the_old_model(model_dir, pixelcnn_bundle):
    settings = Settings(models_dir=model_dir, watch_interval_s=0, max_wait_ms=1000)

    async def body(app, client):
        old_entry = app.state.registry.get("vae")
        old = old_entry.version
        hold = old_entry.batcher.arriving()
        in_flight = asyncio.create_task(client.post("/v1/models/vae/score", json=IMAGE))
        await asyncio.sleep(0.1)  # queued, waiting for the announced companion
        _replace(model_dir / "vae.onnx", pixelcnn_bundle.read_bytes())
        await app.state.registry.reload()
        after = await client.post("/v1/models/vae/score", json=IMAGE)
        hold.settle()
        return old, (await in_flight).json()["version"], after.json()["version"]

    old, in_flight_version, after_version = asyncio.run(_with_app(settings, body))
    assert in_flight_version == old
    assert after_version == Bundle.read(pixelcnn_bundle).version


def test_a_full_queue_answers_429_with_retry_after(model_dir):
    settings = Settings(
        models_dir=model_dir,
        watch_interval_s=0,
        max_wait_ms=1000,
        max_queue_images=2,
        max_images_per_request=2,
    )
    two = {"images": IMAGE["images"] * 2}

    async def body(app, client):
        hold = app.state.registry.get("vae").batcher.arriving()
        first = asyncio.create_task(client.post("/v1/models/vae/score", json=two))
        await asyncio.sleep(0.1)  # two images wait in the queue: it is full
        shed = await client.post("/v1/models/vae/score", json=IMAGE)
        hold.settle()
        other_model = await client.post("/v1/models/pixelcnn/score", json=IMAGE)
        metrics = (await client.get("/metrics")).text
        return (await first).status_code, shed, other_model.status_code, metrics

    first, shed, other_model, metrics = asyncio.run(_with_app(settings, body))
    assert first == 200
    assert shed.status_code == 429
    assert shed.headers["Retry-After"] == "1"
    assert shed.json()["error"]["code"] == "queue_full"
    assert other_model == 200  # each model has its own queue
    assert 'normalcy_rejected_total{model="vae",reason="queue_full"} 1.0' in metrics


def test_shutdown_drains_requests_in_flight(model_dir):
    settings = Settings(models_dir=model_dir, watch_interval_s=0, max_wait_ms=1000)

    async def main():
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            async with app.router.lifespan_context(app):
                app.state.registry.get("vae").batcher.arriving()  # never comes: the batch waits
                pending = [
                    asyncio.create_task(client.post("/v1/models/vae/score", json=IMAGE))
                    for _ in range(5)
                ]
                await asyncio.sleep(0.1)
            # The lifespan has ended (the batchers drained); the queued requests were answered.
            answers = await asyncio.gather(*pending)
            late = await client.post("/v1/models/vae/score", json=IMAGE)
            return [a.status_code for a in answers], late

    statuses, late = asyncio.run(main())
    assert statuses == [200] * 5
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "shutting_down"


def test_a_vanished_model_folder_does_not_unload_the_models(make_client, model_dir):
    client = make_client(admin_key="admin-admin")
    shutil.rmtree(model_dir)
    assert client.post("/v1/admin/reload", headers=ADMIN).json()["removed"] == []
    assert client.post("/v1/models/vae/score", json=IMAGE).status_code == 200
