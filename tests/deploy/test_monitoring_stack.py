"""The monitoring stack end to end, on loopback: a real `normalcy serve`, a real Prometheus with the
project's scrape configuration and alert rules, real traffic (normal digits, noise, bad requests,
load shedding, a hot swap, a refused file). Every dashboard query must return data through
Prometheus's HTTP API: a panel that silently shows "No data" is the failure an operator sees."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from .deployfiles import (
    RULES,
    SCRAPE_CONFIG,
    dashboard_targets,
    load_dashboard,
    load_yaml,
    promql,
    service_metrics,
)

MODEL = "digits"
# Small enough to be shed by a handful of concurrent requests; one image per batch, so a request's
# images wait in the queue while the previous ones are scored.
SERVICE_ENV = {
    "NORMALCY_MAX_BATCH_SIZE": "1",
    "NORMALCY_MAX_QUEUE_IMAGES": "8",
    "NORMALCY_MAX_IMAGES_PER_REQUEST": "8",
    "NORMALCY_WATCH_INTERVAL_S": "0.5",
    "NORMALCY_DRIFT_WINDOW": "50",
    "NORMALCY_DRIFT_MIN_SAMPLES": "20",
    "NORMALCY_THREADS": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready at {url} after {timeout_s} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        return process.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0]


@pytest.fixture
def service(vae_bundle, tmp_path):
    """`normalcy serve` on a free loopback port, serving the tiny VAE as model `digits`."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(vae_bundle, models / f"{MODEL}.onnx")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMALCY_")}
    command = [
        str(Path(sys.executable).parent / "normalcy"),
        "serve",
        "--models",
        str(models),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command,
        env={**env, **SERVICE_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/v2/health/ready", process, "normalcy serve")
        yield url, port, models
    finally:
        _stop(process)


@pytest.fixture
def prometheus(prometheus_binary, service, tmp_path):
    """Prometheus on a free loopback port: the project's scrape configuration and rules, with the
    normalcy target pointed at the test's service and the intervals cut to one second."""
    _, service_port, _ = service
    port = _free_port()
    config = load_yaml(SCRAPE_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    for job in config["scrape_configs"]:
        address = f"127.0.0.1:{service_port if job['job_name'] == 'normalcy' else port}"
        job["static_configs"] = [{"targets": [address]}]
        job.pop("scrape_timeout", None)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    command = [
        prometheus_binary,
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/-/ready", process, "prometheus", timeout_s=30)
        yield url
    finally:
        _stop(process)


def _query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def _has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _score(url: str, images: np.ndarray) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{MODEL}/score", json={"images": images.tolist()}, timeout=30
    )


def _traffic(url: str, normal: np.ndarray, anomalous: np.ndarray, rng: np.random.Generator) -> None:
    """One round: a few normal images, a few noise images, one request of each kind of mistake."""
    for images in (normal[rng.choice(len(normal), 8, replace=False)], anomalous[:4]):
        assert _score(url, images).status_code == 200
    assert (
        httpx.post(
            f"{url}/v1/models/no-such-model/score", json={"images": []}, timeout=10
        ).status_code
        == 404
    )
    assert _score(url, np.zeros((1, 3, 3), np.uint8)).status_code == 400


def _shed(url: str, normal: np.ndarray) -> None:
    """Concurrent requests of 8 images against a queue of 8, until one is refused with 429."""
    batch = normal[:8]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            codes = list(pool.map(lambda _: _score(url, batch).status_code, range(8)))
            assert set(codes) <= {200, 429}, codes
            if 429 in codes:
                return
    pytest.fail("no request was shed: the queue never filled")


def _new_version(models: Path) -> None:
    """Replace the bundle with a new version (same graph, other metadata), as a deploy would."""
    from detectors.bundle import Bundle, write_bundle
    from detectors.spec import BundleSpec

    bundle = Bundle.read(models / f"{MODEL}.onnx")
    metadata = bundle.spec.to_json()
    metadata["training"]["note"] = "hot-swapped by test_monitoring_stack"
    write_bundle(bundle.model_bytes, BundleSpec.from_json(metadata), models / f"{MODEL}.onnx")


def test_every_dashboard_query_returns_data_from_the_live_service(service, prometheus, digits_test):
    url, _, models = service
    normal = digits_test.images[np.isin(digits_test.labels, [0, 1, 2, 3, 4])]
    rng = np.random.default_rng(0)
    anomalous = rng.integers(0, 256, size=(16, *normal.shape[1:]), dtype=np.uint8)
    missing = {
        f"{panel['title']}/{target['refId']}": promql(target["expr"])
        for panel, target in dashboard_targets(load_dashboard())
    }
    _traffic(url, normal, anomalous, rng)
    _shed(url, normal)
    _new_version(models)
    (models / "broken.onnx").write_bytes(b"this is not an ONNX file")
    # Traffic keeps flowing while we poll: rates and quantiles need samples before and after it.
    deadline = time.monotonic() + 90
    while missing and time.monotonic() < deadline:
        _traffic(url, normal, anomalous, rng)
        time.sleep(1)
        for name, expr in list(missing.items()):
            if _has_finite_value(_query(prometheus, expr)):
                del missing[name]
    assert missing == {}, "dashboard queries without data from a live service"
    # Every metric the service defines reached Prometheus under the name the files use.
    names = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"])
    for family, kind in service_metrics().items():
        assert (f"{family}_bucket" if kind == "histogram" else family) in names


def test_metrics_through_prometheus_match_the_traffic_and_the_rules_evaluate(
    service, prometheus, digits_test
):
    url, _, models = service
    normal = digits_test.images[np.isin(digits_test.labels, [0, 1, 2, 3, 4])][:40]
    noise = np.random.default_rng(1).integers(0, 256, size=(20, *normal.shape[1:]), dtype=np.uint8)
    for start in range(0, len(normal), 8):
        assert _score(url, normal[start : start + 8]).status_code == 200
    flagged = _score(url, noise[:8]).json()
    (models / "broken.onnx").write_bytes(b"this is not an ONNX file")

    expected_anomalies = sum(r["is_anomaly"] for r in flagged["results"])
    deadline = time.monotonic() + 60
    while True:
        scored = _query(prometheus, f'sum(normalcy_images_scored_total{{model="{MODEL}"}})')
        alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        firing = {
            (a["labels"]["alertname"], a["labels"].get("model"))
            for a in alerts
            if a["state"] == "firing"
        }
        done = (
            scored
            and float(scored[0]["value"][1]) == len(normal) + 8
            and ("NormalcyModelLoadFailed", "broken") in firing
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert float(scored[0]["value"][1]) == len(normal) + 8
    anomalies = _query(prometheus, f'sum(normalcy_anomalies_total{{model="{MODEL}"}})')
    assert float(anomalies[0]["value"][1]) >= expected_anomalies > 0
    # A refused file fires its alert at once: the rules evaluate against the service's real series.
    assert ("NormalcyModelLoadFailed", "broken") in firing
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in load_yaml(RULES)["groups"])
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    # The dashboard's model variable, as Grafana would ask for it.
    values = httpx.get(
        f"{prometheus}/api/v1/label/model/values",
        params={"match[]": "normalcy_model_info"},
        timeout=10,
    ).json()["data"]
    assert values == [MODEL]


def test_counters_are_there_at_zero_before_the_first_event(service, prometheus):
    """rate() over the labelled counters answers 0, not "no data", on a service that has shed
    nothing and swapped nothing yet; and no `_created` series reach Prometheus."""
    rejected = reloads = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rejected = _query(prometheus, f'rate(normalcy_rejected_total{{model="{MODEL}"}}[5s])')
        reloads = _query(prometheus, f'rate(normalcy_model_reloads_total{{model="{MODEL}"}}[5s])')
        if len(rejected) == 2 and reloads:
            break
        time.sleep(1)
    assert {r["metric"]["reason"] for r in rejected} == {"queue_full", "shutting_down"}
    assert [float(r["value"][1]) for r in rejected + reloads] == [0.0, 0.0, 0.0]
    names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
    assert [n for n in names if n.startswith("normalcy_") and n.endswith("_created")] == []
