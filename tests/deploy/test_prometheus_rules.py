"""The Prometheus scrape configuration and alert rules: valid for promtool, unit-tested, and written
against the metrics the service really exports."""

from __future__ import annotations

import re
import subprocess

import pytest

from .deployfiles import (
    ROOT,
    RULE_TESTS,
    RULES,
    SCRAPE_CONFIG,
    alert_rules,
    load_yaml,
    referenced_metrics,
    service_metrics,
)


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_scrape_configuration_is_valid(promtool):
    result = _promtool(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid(promtool):
    result = _promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass(promtool):
    result = _promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not():
    fires, quiet = set(), set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"


def test_rule_unit_tests_read_the_rules_file():
    rule_files = load_yaml(RULE_TESTS)["rule_files"]
    assert [(RULE_TESTS.parent / f).resolve() for f in rule_files] == [RULES.resolve()]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_reads_only_metrics_the_service_exports(rule):
    unknown = referenced_metrics(rule["expr"]) - set(service_metrics())
    assert unknown == set(), f"{rule['alert']} reads metrics the service does not define"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_a_severity_and_says_what_to_do(rule):
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"].split()) >= 15, "say what it means and what to do"


def test_rules_cover_what_an_operator_of_a_detector_needs():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    reads = {name: referenced_metrics(expr) for name, expr in exprs.items()}
    needed = {
        "anomaly rate against alpha": {"normalcy_anomalies_total", "normalcy_model_alpha"},
        "p-value drift": {"normalcy_pvalue_drift_ks_p_value"},
        "queue saturation": {"normalcy_queue_depth", "normalcy_queue_capacity"},
        "load shedding": {"normalcy_rejected_total"},
        "model load failures": {"normalcy_model_load_failures_total"},
        "latency": {"normalcy_request_duration_seconds"},
    }
    for what, metrics in needed.items():
        assert any(metrics <= used for used in reads.values()), f"no alert on {what}"
    assert any('code=~"5.."' in expr for expr in exprs.values()), "no alert on the error rate"
    assert any(re.search(r'\bup\{job="normalcy"\} == 0', expr) for expr in exprs.values()), (
        "no alert on a target that is down"
    )


def test_scrape_job_is_the_one_the_rules_select():
    jobs = {job["job_name"]: job for job in load_yaml(SCRAPE_CONFIG)["scrape_configs"]}
    assert jobs["normalcy"]["metrics_path"] == "/metrics"
    selected = {m for rule in alert_rules() for m in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert selected == {"normalcy"}


def test_every_alert_is_explained_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    monitoring = readme[readme.index("## Monitoring") :]
    missing = [rule["alert"] for rule in alert_rules() if rule["alert"] not in monitoring]
    assert missing == []
