"""The Kubernetes manifests, CPU base and GPU overlay: every file parses and is listed; probes,
ports, metric paths, user, models volume and settings agree with the image and the service."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from .deployfiles import (
    DEPLOY,
    RULES,
    SCRAPE_CONFIG,
    final_stage_by_keyword,
    image_command,
    load_yaml,
    load_yaml_documents,
    option,
)

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
GPU = K8S / "gpu"


def _base_objects() -> dict[str, dict]:
    """{kind: object} from the files base/kustomization.yaml lists (one object of each kind)."""
    objects = {}
    for name in load_yaml(BASE / "kustomization.yaml")["resources"]:
        for doc in load_yaml_documents(BASE / name):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc
    return objects


def strategic_merge(base, patch):
    """Enough of kubectl's strategic merge for these patches: maps merge, lists of named items merge
    by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {
            **base,
            **{k: strategic_merge(base[k], v) if k in base else v for k, v in patch.items()},
        }
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    )
    if named:
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = strategic_merge(merged.get(item["name"], {}), item)
        return list(merged.values())
    return patch


def objects(variant: str) -> dict[str, dict]:
    found = _base_objects()
    if variant == "gpu":
        for entry in load_yaml(GPU / "kustomization.yaml")["patches"]:
            patch = load_yaml(GPU / entry["path"])
            assert patch["metadata"]["name"] == found[patch["kind"]]["metadata"]["name"]
            found[patch["kind"]] = strategic_merge(found[patch["kind"]], patch)
    return found


def container(variant: str) -> dict:
    (only,) = objects(variant)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


VARIANTS = ["base", "gpu"]


def test_every_manifest_is_listed_and_parses():
    listed = load_yaml(BASE / "kustomization.yaml")["resources"]
    assert sorted(listed) == sorted(
        p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for path in K8S.rglob("*.yaml"):
        for doc in load_yaml_documents(path):
            assert doc.get("apiVersion"), path
            assert doc.get("kind"), path
    overlay = load_yaml(GPU / "kustomization.yaml")
    assert overlay["resources"] == ["../base"]
    assert {p["path"] for p in overlay["patches"]} == {
        p.name for p in GPU.glob("*.yaml") if p.name != "kustomization.yaml"
    }


def test_base_has_what_a_production_deployment_needs():
    assert set(_base_objects()) == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_are_on_the_v2_health_endpoints_of_the_served_port(variant):
    c = container(variant)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(option(image_command(), "--port"))}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_runs_the_image_command(variant):
    c = container(variant)
    assert c.get("command") is None, "keep the image's entrypoint"
    assert ["normalcy", *c["args"]] == image_command("cuda" if variant == "gpu" else "cpu")


@pytest.mark.parametrize("variant", VARIANTS)
def test_pod_runs_as_the_image_user_without_privileges(variant):
    pod = objects(variant)["Deployment"]["spec"]["template"]["spec"]
    uid, gid = final_stage_by_keyword("cpu")["USER"][-1].split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    assert pod["automountServiceAccountToken"] is False
    security = container(variant)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def _quantity(value) -> float:
    """Kubernetes CPU / memory quantities as numbers (only the suffixes used here)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    return float(match[1]) * units.get(match[2], 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_are_requested_and_limited(variant):
    resources = container(variant)["resources"]
    for name in ("cpu", "memory"):
        assert 0 < _quantity(resources["requests"][name]) <= _quantity(resources["limits"][name])


def test_gpu_variant_asks_for_a_gpu_and_runs_the_cuda_image():
    assert "nvidia.com/gpu" not in container("base")["resources"]["limits"]
    assert int(container("gpu")["resources"]["limits"]["nvidia.com/gpu"]) == 1
    pod = objects("gpu")["Deployment"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    image_name = container("base")["image"].split(":")[0]
    images = load_yaml(GPU / "kustomization.yaml")["images"]
    assert {"name": image_name, "newTag": "cuda"} in images
    assert "normalcy:cuda" in (DEPLOY / "docker" / "compose.gpu.yaml").read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_models_come_read_only_from_the_claimed_volume(variant):
    found = objects(variant)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(variant)["volumeMounts"]}
    models = mounts[option(image_command(), "--models")]
    assert models["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == models["name"])
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == found["PersistentVolumeClaim"]["metadata"]["name"]
    )
    # A read-only root filesystem still needs a writable /tmp.
    assert "/tmp" in mounts


def test_service_and_budget_select_the_pods_and_reach_the_named_port():
    found = objects("base")
    pod_labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = found["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] == "http"
    assert port["port"] == int(option(image_command(), "--port"))
    assert (
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items()
        <= pod_labels.items()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_autoscaler_scales_the_deployment(variant):
    found = objects(variant)
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    assert target["name"] == found["Deployment"]["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]


def test_metrics_are_scraped_where_the_service_serves_them():
    found = objects("base")
    monitor = found["ServiceMonitor"]["spec"]
    service_labels = found["Service"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= service_labels.items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == found["Service"]["spec"]["ports"][0]["name"]
    (job,) = [j for j in load_yaml(SCRAPE_CONFIG)["scrape_configs"] if j["job_name"] == "normalcy"]
    assert endpoint["path"] == job["metrics_path"] == "/metrics"
    # The operator names the job after the Service; the alert rules select job="normalcy".
    assert found["Service"]["metadata"]["name"] == job["job_name"]
    annotations = found["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == option(image_command(), "--port")


def test_prometheus_rule_is_the_rules_file():
    sys.path.insert(0, str(K8S))
    try:
        from make_prometheusrule import TARGET, render
    finally:
        sys.path.remove(str(K8S))
    assert Path(TARGET) == BASE / "prometheusrule.yaml"
    assert TARGET.read_text() == render(RULES.read_text()), (
        "run: python deploy/k8s/make_prometheusrule.py"
    )
    assert objects("base")["PrometheusRule"]["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_config_map_holds_valid_settings(tmp_path, monkeypatch):
    from service.settings import Settings

    found = objects("base")
    data = found["ConfigMap"]["data"]
    (source,) = container("base")["envFrom"]
    assert source["configMapRef"]["name"] == found["ConfigMap"]["metadata"]["name"]
    fields = {f"NORMALCY_{name.upper()}" for name in Settings.model_fields}
    assert set(data) - fields == set()
    for name in list(os.environ):
        if name.startswith("NORMALCY_"):
            monkeypatch.delenv(name)
    for name, value in data.items():
        assert isinstance(value, str), f"{name}: ConfigMap values must be strings"
        monkeypatch.setenv(name, value)
    settings = Settings(models_dir=tmp_path)  # raises on a bad value, as the service would
    # Unset, ONNX Runtime threads follow the node's cores, far past the CPU limit.
    assert settings.threads == _quantity(container("base")["resources"]["limits"]["cpu"])
    secret_env = {e["name"] for e in container("base")["env"] if "secretKeyRef" in e["valueFrom"]}
    assert secret_env <= fields


def test_pod_is_given_time_to_drain_before_it_is_killed(tmp_path):
    from service.settings import Settings

    pod = objects("base")["Deployment"]["spec"]["template"]["spec"]
    drain_s = Settings(models_dir=tmp_path).shutdown_timeout_s
    pre_stop = container("base")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain_s
