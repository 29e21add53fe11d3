"""The plain scoring API: model listing and metadata, scoring, and the admin reload."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams, UploadFile
from starlette.exceptions import HTTPException

from detectors import ScoreResult
from detectors.calibration import check_alpha
from detectors.errors import InputError
from detectors.images import InputSpec

from . import requests
from .deps import ModelDep, RegistryDep, ScoringDep, require_admin_key
from .errors import ApiError
from .model import ServedModel
from .requests import Limits, ParsedImages
from .schemas import ERRORS, ModelList, ReloadResponse, ScoreResponse

router = APIRouter(prefix="/v1", tags=["scoring"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": 'images as multipart files, JSON {"images": [base64 | nested array]}, '
        "or one encoded image as the body",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "additionalProperties": False,
                    "properties": {
                        "images": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "oneOf": [
                                    {"type": "string", "contentEncoding": "base64"},
                                    {"type": "array"},
                                ]
                            },
                        },
                        "labels": {"type": "array", "items": {"type": "integer"}},
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# The query is parsed by hand: FastAPI's per-parameter validation costs more than the rest of a
# small request. These entries document it in the OpenAPI schema.
_QUERY_DOC = [
    {
        "name": "score",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "which of the bundle's scores (default: the bundle's default_score)",
    },
    {
        "name": "alpha",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "description": "false-positive rate for the decision (default: the calibrated alpha)",
    },
    {
        "name": "heatmap",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "add a per-pixel heat map (C, H, W) to each result",
    },
    {
        "name": "labels",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
        "description": "class-conditional models: one class per image, comma-separated "
        '(or "labels": [...] in a JSON body)',
    },
]
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def score_options(query: QueryParams) -> dict:
    """score, alpha, heatmap and labels from the query string, checked; unknown parameters are
    refused."""
    unknown = sorted(set(query) - {"score", "alpha", "heatmap", "labels"})
    if unknown:
        msg = f"unknown query parameter(s) {unknown}; accepted: score, alpha, heatmap, labels"
        raise ApiError(400, "unknown_parameter", msg)
    alpha = query.get("alpha")
    if alpha is not None:
        try:
            alpha = check_alpha(alpha)
        except InputError as error:
            raise ApiError(400, "invalid_alpha", str(error)) from None
    heatmap = query.get("heatmap", "false").lower()
    if heatmap not in _TRUE + _FALSE:
        raise ApiError(400, "invalid_request", f"heatmap must be true or false, got {heatmap!r}")
    labels = query.get("labels")
    if labels is not None:
        try:
            labels = [int(part) for part in labels.split(",")]
        except ValueError:
            msg = f"labels must be comma-separated whole numbers, got {query['labels']!r}"
            raise ApiError(400, "invalid_labels", msg) from None
    return {
        "score": query.get("score"),
        "alpha": alpha,
        "heatmap": heatmap in _TRUE,
        "labels": labels,
    }


@router.get("/models", response_model=ModelList)
async def list_models(registry: RegistryDep) -> dict:
    return {"models": [entry.describe() for _, entry in sorted(registry.entries.items())]}


@router.get("/models/{name}", responses=ERRORS)
async def model_metadata(model: ModelDep) -> dict:
    """Metadata, calibration summary (threshold, reference histogram per score) and version."""
    return model.describe(full=True)


@router.post(
    "/models/{name}/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    openapi_extra={**_BODY_DOC, "parameters": _QUERY_DOC},
)
async def score_images(request: Request, scoring: ScoringDep) -> JSONResponse:
    """Score one or more images: raw score, conformal p-value and decision for each.

    Needs `X-API-Key` (or `Authorization: Bearer`) when the server has an API key.
    """
    model, settings = scoring.model, scoring.settings
    options = score_options(request.query_params)
    limits = Limits.of(model.detector.input_spec, settings)
    with model.batcher.arriving() as arrival:  # the batcher may wait for this request
        parsed = await read_images(request, model.detector.input_spec, limits)
        if parsed.labels is not None:
            if options["labels"] is not None:
                msg = "labels given twice (query and body); give them once"
                raise ApiError(400, "invalid_labels", msg)
            options["labels"] = parsed.labels
        result, used = await scoring.registry.score(
            model, parsed.images, **options, arrival=arrival
        )
    return JSONResponse(score_answer(used, result, parsed.names, options["labels"]))


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses=ERRORS,
    dependencies=[Depends(require_admin_key)],
    tags=["admin"],
)
async def reload_models(registry: RegistryDep) -> dict:
    """Load new and changed bundles from the model folder now (bad ones are refused and listed)."""
    report = await registry.reload()
    return {
        "loaded": report.loaded,
        "unchanged": report.unchanged,
        "removed": report.removed,
        "failed": report.failed,
    }


async def read_images(request: Request, spec: InputSpec, limits: Limits) -> ParsedImages:
    """The request body, whichever of the accepted forms it takes, as a checked uint8 batch."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted"
        )
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()  # BodyLimit refuses oversized bodies while this reads
    if not body:
        msg = (
            "the request body is empty; send images as multipart/form-data, JSON or an image/* body"
        )
        raise ApiError(400, "empty_body", msg)
    if media == "multipart/form-data":
        files = await _multipart_files(request, limits)
        return await requests.parse(len(body), requests.from_files, files, spec, limits)
    if media == "application/json":
        return await requests.parse(len(body), requests.from_json, body, spec, limits)
    if media.startswith("image/") or media == "application/octet-stream":
        array = await requests.parse(len(body), requests.decode, body, spec, limits, "body")
        return ParsedImages(array[None], [None])
    msg = (
        f"Content-Type {media or '(none)'!r} is not accepted; use multipart/form-data, "
        "application/json or image/*"
    )
    raise ApiError(415, "unsupported_media_type", msg)


async def _multipart_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=limits.max_images, max_fields=16)
    except HTTPException as error:
        if str(error.detail).startswith("Too many files"):
            msg = f"more than {limits.max_images} images in one request"
            raise ApiError(413, "too_many_images", msg) from None
        raise ApiError(400, "invalid_multipart", str(error.detail)) from None
    try:
        files = []
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or field, await value.read()))
    finally:
        await form.close()
    if not files:
        raise ApiError(400, "no_images", "the multipart body holds no file parts")
    return files


def _round(values: np.ndarray) -> list:
    return np.round(values.astype(np.float64), 4).tolist()


def score_answer(
    model: ServedModel, result: ScoreResult, names: list[str | None], labels: list | None = None
) -> dict:
    threshold = float(result.threshold) if np.isfinite(result.threshold) else None
    per_image = []
    for i, (score, p_value, flagged) in enumerate(
        zip(
            result.scores.tolist(),
            result.p_values.tolist(),
            result.is_anomaly.tolist(),
            strict=True,
        )
    ):
        item = {
            "index": i,
            "filename": names[i],
            "score": score,
            "score_name": result.score_name,
            "p_value": p_value,
            "is_anomaly": flagged,
            "threshold": threshold,
            "alpha": result.alpha,
        }
        if result.probability is not None:
            item["probability"] = float(result.probability[i])
        if labels is not None:
            item["label"] = int(labels[i])
        if result.heatmap is not None:
            item["heatmap"] = _round(result.heatmap[i])
        per_image.append(item)
    return {
        "model": model.name,
        "version": model.version,
        "score_name": result.score_name,
        "alpha": result.alpha,
        "threshold": threshold,
        "heatmap_units": model.heatmap_units if result.heatmap is not None else None,
        "results": per_image,
    }
