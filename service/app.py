"""The scoring service: `create_app(settings)` builds it; the lifespan loads the models once.

Routes live in api_v1 (plain JSON / multipart scoring, admin) and api_v2 (Open Inference Protocol).
`GET /` and `/static` belong to the web page: when `service/static/index.html` exists it is served.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

import detectors

from . import api_v1, api_v2
from .deps import MetricsDep, RegistryDep
from .docs import install_docs
from .errors import install_error_handlers
from .metrics import CONTENT_TYPE, Metrics
from .middleware import BodyLimit, RequestMetrics
from .openapi import install_openapi
from .registry import ModelRegistry
from .settings import Settings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    registry = ModelRegistry(settings, app.state.metrics)
    app.state.registry = registry
    await registry.start()
    log.info(
        "serving %d model(s) from %s: %s",
        len(registry.entries),
        settings.models_dir,
        ", ".join(
            f"{e.name} {e.version} on {e.detector.provider}" for e in registry.entries.values()
        )
        or "none",
    )
    try:
        yield
    finally:
        log.info("shutting down: draining queued requests")
        await registry.close()


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> FastAPI:
    app = FastAPI(
        title="normalcy",
        version=detectors.__version__,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, from the package's own files
        redoc_url=None,  # ReDoc loads its logo from a CDN: no /redoc
        # Metrics are Prometheus (service/metrics.py); FastAPI's OpenTelemetry hooks stay off
        # rather than cost a check on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        description="Anomaly scores from explicit density models (PixelCNN, VAE), "
        "calibrated as conformal p-values.",
    )
    app.state.settings = settings
    app.state.metrics = metrics or Metrics()
    install_error_handlers(app)
    install_docs(app)
    install_openapi(app, key_required=settings.api_key is not None)
    app.include_router(api_v1.router)
    app.include_router(api_v2.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(registry: RegistryDep, metrics: MetricsDep) -> Response:
        for entry in list(registry.entries.values()):
            entry.update_drift_metrics()
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
        index = STATIC_DIR / "index.html"
        if index.is_file():

            @app.get("/", include_in_schema=False)
            async def web_page() -> FileResponse:
                return FileResponse(index)

    # The last added middleware runs first: metrics see every answer, 413s included.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app
