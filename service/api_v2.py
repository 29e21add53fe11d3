"""The KServe / Triton Open Inference Protocol v2 over HTTP, so existing clients work.

One UINT8 input tensor named as the bundle's input, shape [B, C, H, W] ([B, H, W] for grey models),
as JSON `data` or in the binary tensor extension (`Inference-Header-Content-Length`). Outputs:
`score` FP64 [B], `p_value` FP64 [B], `is_anomaly` BOOL [B], and `heatmap` FP32 [B, C, H, W] when
asked for. Request parameters `score` and `alpha` choose the score and the false-positive rate.
Errors follow the protocol, `{"error": "<message>"}` (plus normalcy's stable `code`). Triton's model
configuration and statistics extensions answer what its clients ask: `GET .../config`, `.../stats`.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import detectors

from .deps import ModelDep, RegistryDep, Scoring, ScoringDep, SettingsDep, get_scoring
from .errors import ApiError
from .model import ServedModel
from .openapi import V2_INFER_BODY
from .requests import Limits, parse
from .schemas import V2_INFER_ERRORS, v2_errors
from .v2_requests import OUTPUTS, parse_request

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
NOT_FOUND = v2_errors(404)

_NUMPY = {"FP64": np.float64, "FP32": np.float32, "BOOL": np.bool_}


def _check_version(model: ServedModel, version: str) -> None:
    if version != model.version:
        msg = f"model {model.name!r} serves version {model.version}, not {version!r}"
        raise ApiError(404, "unknown_version", msg)


async def get_model_version(version: str, model: ModelDep) -> ServedModel:
    _check_version(model, version)
    return model


async def get_scoring_version(name: str, version: str, request: Request) -> Scoring:
    scoring = await get_scoring(name, request)
    _check_version(scoring.model, version)
    return scoring


VersionedModelDep = Annotated[ServedModel, Depends(get_model_version)]
VersionedScoringDep = Annotated[Scoring, Depends(get_scoring_version)]


@router.get("")
async def server_metadata() -> dict:
    return {
        "name": "normalcy",
        "version": detectors.__version__,
        "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
    }


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", responses=v2_errors(503))
async def ready(registry: RegistryDep) -> dict:
    if not registry.ready:
        why = "shutting down" if registry.shutting_down else "no model loaded"
        raise ApiError(503, "not_ready", f"not ready: {why}")
    return {"ready": True}


def _metadata(model: ServedModel) -> dict:
    channels, height, width = model.detector.input_shape
    outputs = [
        {"name": "score", "datatype": "FP64", "shape": [-1]},
        {"name": "p_value", "datatype": "FP64", "shape": [-1]},
        {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
    ]
    if model.has_heatmap:
        outputs.append(
            {"name": "heatmap", "datatype": "FP32", "shape": [-1, channels, height, width]}
        )
    spec = model.detector.spec
    inputs = [
        {"name": spec.input.name, "datatype": "UINT8", "shape": [-1, channels, height, width]}
    ]
    if spec.labels:  # a class-conditional model: one class per image
        inputs.append({"name": spec.labels.input, "datatype": "INT64", "shape": [-1]})
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
    }


@router.get("/models/stats")
async def all_statistics(registry: RegistryDep) -> dict:
    """The statistics extension: inference counts and times of every model served."""
    entries = [registry.entries[name] for name in sorted(registry.entries)]
    return {"model_stats": [e.statistics.to_v2(e.name, e.version) for e in entries]}


@router.get("/models/{name}", responses=NOT_FOUND)
async def model_metadata(model: ModelDep) -> dict:
    return _metadata(model)


@router.get("/models/{name}/versions/{version}", responses=NOT_FOUND)
async def model_version_metadata(model: VersionedModelDep) -> dict:
    return _metadata(model)


@router.get("/models/{name}/ready", responses=NOT_FOUND)
async def model_ready(model: ModelDep) -> dict:
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", responses=NOT_FOUND)
async def model_version_ready(model: VersionedModelDep) -> dict:
    return {"name": model.name, "ready": True}


def _config(model: ServedModel, max_images: int) -> dict:
    """Triton's model configuration: tensors without their batch axis (`max_batch_size` > 0), one
    value per image given as dims [1] reshaped to a scalar, the batching the server does."""
    channels, height, width = model.detector.input_shape
    spec = model.detector.spec
    per_image = {"dims": [1], "reshape": {"shape": []}}
    inputs = [
        {
            "name": spec.input.name,
            "data_type": "TYPE_UINT8",
            "format": "FORMAT_NCHW",
            "dims": [channels, height, width],
        }
    ]
    if spec.labels:
        inputs.append({"name": spec.labels.input, "data_type": "TYPE_INT64", **per_image})
    outputs = [
        {"name": name, "data_type": f"TYPE_{OUTPUTS[name]}", **per_image}
        for name in ("score", "p_value", "is_anomaly")
    ]
    if model.has_heatmap:
        outputs.append(
            {"name": "heatmap", "data_type": "TYPE_FP32", "dims": [channels, height, width]}
        )
    batcher = model.batcher
    return {
        "name": model.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": max_images,
        "input": inputs,
        "output": outputs,
        "dynamic_batching": {
            "preferred_batch_size": [batcher.max_batch_size],
            "max_queue_delay_microseconds": round(batcher.max_wait_s * 1e6),
        },
        "parameters": {
            "default_score": {"string_value": model.detector.default_score},
            "alpha": {"string_value": str(model.detector.default_alpha)},
        },
    }


@router.get("/models/{name}/config", responses=NOT_FOUND)
async def model_config(model: ModelDep, settings: SettingsDep) -> dict:
    return _config(model, settings.max_images_per_request)


@router.get("/models/{name}/versions/{version}/config", responses=NOT_FOUND)
async def model_version_config(model: VersionedModelDep, settings: SettingsDep) -> dict:
    return _config(model, settings.max_images_per_request)


@router.get("/models/{name}/stats", responses=NOT_FOUND)
async def model_statistics(model: ModelDep) -> dict:
    return {"model_stats": [model.statistics.to_v2(model.name, model.version)]}


@router.get("/models/{name}/versions/{version}/stats", responses=NOT_FOUND)
async def model_version_statistics(model: VersionedModelDep) -> dict:
    return {"model_stats": [model.statistics.to_v2(model.name, model.version)]}


@router.post("/models/{name}/infer", responses=V2_INFER_ERRORS, openapi_extra=V2_INFER_BODY)
async def infer(request: Request, scoring: ScoringDep) -> Response:
    """Inference: needs `X-API-Key` (or `Authorization: Bearer`) when the server has an API key."""
    return await _infer(request, scoring)


@router.post(
    "/models/{name}/versions/{version}/infer",
    responses=V2_INFER_ERRORS,
    openapi_extra=V2_INFER_BODY,
)
async def infer_version(request: Request, scoring: VersionedScoringDep) -> Response:
    return await _infer(request, scoring)


async def _infer(request: Request, scoring: Scoring) -> Response:
    model, registry = scoring.model, scoring.registry
    limits = Limits.of(model.detector.input_spec, scoring.settings)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted"
        )
    with model.batcher.arriving() as arrival:  # the batcher may wait for this request
        body = await request.body()
        if not body:
            msg = "the request body is empty; expected a v2 inference request"
            raise ApiError(400, "empty_body", msg)
        header_length = request.headers.get("inference-header-content-length")
        parsed = await parse(len(body), parse_request, body, header_length, model, limits)
        result, used = await registry.score(
            model,
            parsed["images"],
            score=parsed["score"],
            alpha=parsed["alpha"],
            heatmap="heatmap" in parsed["outputs"],
            arrival=arrival,
            labels=parsed["labels"],
        )
    columns = {
        "score": result.scores,
        "p_value": result.p_values,
        "is_anomaly": result.is_anomaly,
        "heatmap": result.heatmap,
    }
    threshold = float(result.threshold) if math.isfinite(result.threshold) else None
    header = {
        "model_name": used.name,
        "model_version": used.version,
        "parameters": {
            "score_name": result.score_name,
            "alpha": result.alpha,
            "threshold": threshold,
        },
        "outputs": [],
    }
    if parsed["id"] is not None:
        header["id"] = parsed["id"]
    blobs = []
    for name, binary in parsed["outputs"].items():
        array = np.ascontiguousarray(columns[name], dtype=_NUMPY[OUTPUTS[name]])
        tensor = {"name": name, "datatype": OUTPUTS[name], "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist()
        header["outputs"].append(tensor)
    if not blobs:
        return JSONResponse(header)
    head = json.dumps(header).encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
