"""What the deployment tests read: repository paths, YAML, JSON and Dockerfile readers, PromQL
from dashboard panels, and the metric names the service defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "normalcy.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "normalcy.rules.test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "normalcy.json"
DOCKERFILES = {
    "cpu": DEPLOY / "docker" / "Dockerfile",
    "cuda": DEPLOY / "docker" / "Dockerfile.cuda",
}


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_documents(path: Path) -> list:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets(dashboard: dict) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner, target) for target in inner.get("targets", [])]
    return found


# Grafana's built-in variables, replaced the way Grafana would for a one-hour view of a stack that
# scrapes every 15 s (or faster): ranges long enough to hold several scrapes.
GRAFANA_BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promql(expr: str, variables: dict[str, str] | None = None) -> str:
    """A panel's query with Grafana's variables replaced; `$model` means every model by default."""
    values = {**GRAFANA_BUILTINS, "$model": ".*", **(variables or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


METRIC_NAME = re.compile(r"\b(normalcy_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def referenced_metrics(expr: str) -> set[str]:
    """normalcy_* metric families an expression reads (histogram series mapped to their family)."""
    names = set()
    for name in METRIC_NAME.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def service_metrics() -> dict[str, str]:
    """{family name: type} of every normalcy_* metric the service defines (service/metrics.py)."""
    from service.metrics import Metrics

    families = {}
    for metric in Metrics().registry.collect():
        if metric.name.startswith("normalcy_"):
            # prometheus_client names counters without _total; the exposition adds it.
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            families[name] = metric.type
    return families


def alert_rules() -> list[dict]:
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    return instructions[starts[-1] :]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; shell form is refused, it would not get signals."""
    value = json.loads(arguments)
    assert isinstance(value, list), f"not exec form: {arguments}"
    return value


def final_stage_by_keyword(variant: str) -> dict[str, list[str]]:
    """The final stage's instructions, by keyword."""
    found: dict[str, list[str]] = {}
    for keyword, arguments in final_stage(dockerfile_instructions(DOCKERFILES[variant])):
        found.setdefault(keyword, []).append(arguments)
    return found


def image_command(variant: str = "cpu") -> list[str]:
    final = final_stage_by_keyword(variant)
    return exec_form(final["ENTRYPOINT"][-1]) + exec_form(final["CMD"][-1])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def healthcheck(variant: str = "cpu") -> list[str]:
    (line,) = final_stage_by_keyword(variant)["HEALTHCHECK"]
    return exec_form(line[line.index(" CMD ") + len(" CMD ") :])
