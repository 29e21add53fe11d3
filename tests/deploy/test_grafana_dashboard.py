"""The Grafana dashboard and its provisioning: well-formed, every query valid PromQL over metrics
the service exports, provisioning paths that agree with the compose file. (That every query returns
data from a live service: tests/deploy/test_monitoring_stack.py.)"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from .deployfiles import (
    DASHBOARD,
    DEPLOY,
    dashboard_targets,
    load_dashboard,
    load_yaml,
    promql,
    referenced_metrics,
    service_metrics,
)

GRAFANA = DEPLOY / "grafana"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
TARGETS = dashboard_targets(load_dashboard())


def _target_id(item) -> str:
    panel, target = item
    return f"{panel['title']}/{target['refId']}"


def test_panel_ids_are_unique_and_every_query_has_a_unique_ref_id():
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] != "row":
            assert refs, f"panel {panel['title']!r} has no query"


def test_panels_fit_the_grid_without_overlapping():
    cells = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_queries_use_the_datasource_variable_and_only_defined_variables():
    dashboard = load_dashboard()
    defined = {var["name"] for var in dashboard["templating"]["list"]}
    assert {"datasource", "model"} <= defined
    for panel, target in TARGETS:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        used = set(re.findall(r"\$(\w+)", target["expr"])) - {
            "__rate_interval",
            "__interval",
            "__range",
        }
        assert used <= defined, f"{panel['title']!r} uses undefined variables {used - defined}"


def test_model_variable_lists_the_models_in_service():
    model = next(var for var in load_dashboard()["templating"]["list"] if var["name"] == "model")
    assert model["definition"] == "label_values(normalcy_model_info, model)"
    assert model["includeAll"]
    assert model["allValue"] == ".*"


def test_every_query_is_valid_promql(promtool, tmp_path):
    # promtool has no "check this expression"; a recording rule per query gets the same parser.
    rules = [
        {"record": f"panel:query_{i}", "expr": promql(target["expr"])}
        for i, (_, target) in enumerate(TARGETS)
    ]
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_query_reads_only_metrics_the_service_exports(item):
    _, target = item
    assert referenced_metrics(target["expr"]) - set(service_metrics()) == set()


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_query_filters_by_the_model_variable(item):
    panel, target = item
    if referenced_metrics(target["expr"]):
        for selector in re.findall(r"normalcy_\w+(\{[^}]*\})?", target["expr"]):
            assert 'model=~"$model"' in selector, f"{panel['title']!r}: {target['expr']}"


def test_every_metric_the_service_exports_is_on_the_dashboard():
    shown = set().union(*(referenced_metrics(target["expr"]) for _, target in TARGETS))
    assert set(service_metrics()) - shown == set()


def test_datasource_provisioning_matches_the_dashboard_default():
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    (source,) = sources
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service name and port
    variable = next(
        var for var in load_dashboard()["templating"]["list"] if var["name"] == "datasource"
    )
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"]


def test_dashboard_provider_reads_the_folder_compose_mounts():
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "normalcy.yml")["providers"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    source = mounts.get("../grafana/dashboards")
    assert source == provider["options"]["path"]
    assert (DEPLOY / "docker" / "../grafana/dashboards").resolve() == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert mounts.get("../grafana/provisioning") == "/etc/grafana/provisioning"
