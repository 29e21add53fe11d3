"""FastAPI dependencies as `Annotated` aliases; tests swap them with `dependency_overrides`.

All are `async def` (FastAPI runs plain `def` dependencies in a thread pool, a hop per request),
and the scoring routes take a single dependency: FastAPI's dependency solving costs more per
request than the route itself when a handful of small dependencies are chained.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers

from .errors import ApiError
from .metrics import Metrics
from .model import ServedModel
from .registry import ModelRegistry
from .settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


async def get_model(name: str, request: Request) -> ServedModel:
    return request.app.state.registry.get(name)


ModelDep = Annotated[ServedModel, Depends(get_model)]


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_api_key(settings: Settings, headers: Headers) -> None:
    """Scoring needs the API key when one is set: `X-API-Key` or `Authorization: Bearer`."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value()
    bearer = headers.get("authorization", "")
    token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else None
    if not (_same(headers.get("x-api-key"), expected) or _same(token, expected)):
        msg = "missing or wrong API key; send it as X-API-Key or Authorization: Bearer"
        raise ApiError(401, "unauthorized", msg, {"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Scoring:
    """What a scoring route needs: the model it names (caller authorised), registry, settings."""

    model: ServedModel
    registry: ModelRegistry
    settings: Settings


async def get_scoring(name: str, request: Request) -> Scoring:
    state = request.app.state
    check_api_key(state.settings, request.headers)
    return Scoring(state.registry.get(name), state.registry, state.settings)


ScoringDep = Annotated[Scoring, Depends(get_scoring)]

_admin_key = APIKeyHeader(name="X-Admin-Key", auto_error=False, scheme_name="AdminKey")


async def require_admin_key(
    settings: SettingsDep, key: Annotated[str | None, Security(_admin_key)] = None
) -> None:
    """Admin endpoints are off without an admin key, and need it in X-Admin-Key when on."""
    if settings.admin_key is None:
        msg = "admin endpoints are off; set NORMALCY_ADMIN_KEY to turn them on"
        raise ApiError(404, "admin_disabled", msg)
    if not _same(key, settings.admin_key.get_secret_value()):
        raise ApiError(401, "unauthorized", "missing or wrong admin key (X-Admin-Key header)")
