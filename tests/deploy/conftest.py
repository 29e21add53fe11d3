"""Fixtures for the deployment tests: the Prometheus binaries, skipped when absent outside CI and a
failure in CI (CI=true), so CI cannot pass by skipping them."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus"


def in_ci() -> bool:
    """CI sets CI=true and must run every test here: a missing tool fails instead of skipping."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed ({INSTALL_HINT})"
    if in_ci():
        pytest.fail(f"{message}; CI must not skip the monitoring tests (.ci/run installs it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_tool("prometheus")
