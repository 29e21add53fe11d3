"""The KServe / Triton Open Inference Protocol v2 over HTTP, so existing clients work.

One UINT8 input tensor named as the bundle's input, shape [B, C, H, W] ([B, H, W] for grey models),
as JSON `data` or in the binary tensor extension (`Inference-Header-Content-Length`). Outputs:
`score` FP64 [B], `p_value` FP64 [B], `is_anomaly` BOOL [B], and `heatmap` FP32 [B, C, H, W] when
asked for. Request parameters `score` and `alpha` choose the score and the false-positive rate.
Errors keep the project's `{"error": {"code", "message"}}` shape (Triton's client shows the object).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, NoReturn

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

import detectors
from detectors.calibration import check_alpha
from detectors.errors import InputError

from .deps import ModelDep, RegistryDep, Scoring, ScoringDep, get_scoring
from .errors import ApiError
from .model import ServedModel
from .requests import parse, pixels

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

OUTPUTS = {"score": "FP64", "p_value": "FP64", "is_anomaly": "BOOL", "heatmap": "FP32"}
DEFAULT_OUTPUTS = ("score", "p_value", "is_anomaly")
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
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
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


@router.get("/models/{name}")
async def model_metadata(model: ModelDep) -> dict:
    return _metadata(model)


@router.get("/models/{name}/versions/{version}")
async def model_version_metadata(model: VersionedModelDep) -> dict:
    return _metadata(model)


@router.get("/models/{name}/ready")
async def model_ready(model: ModelDep) -> dict:
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(model: VersionedModelDep) -> dict:
    return {"name": model.name, "ready": True}


@router.post("/models/{name}/infer")
async def infer(request: Request, scoring: ScoringDep) -> Response:
    """Inference: needs `X-API-Key` (or `Authorization: Bearer`) when the server has an API key."""
    return await _infer(request, scoring)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(request: Request, scoring: VersionedScoringDep) -> Response:
    return await _infer(request, scoring)


async def _infer(request: Request, scoring: Scoring) -> Response:
    model, registry = scoring.model, scoring.registry
    max_images = scoring.settings.max_images_per_request
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
        parsed = await parse(len(body), parse_request, body, header_length, model, max_images)
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


def _fail(message: str, code: str = "invalid_tensor") -> NoReturn:
    raise ApiError(400, code, message)


def parse_request(
    body: bytes, header_length: str | None, model: ServedModel, max_images: int
) -> dict:
    """A v2 inference request -> images, score, alpha, requested outputs {name: binary}, id."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            _fail(
                f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                f"{len(body)} bytes",
                "invalid_request",
            )
        size = int(header_length)
        body, binary = body[:size], body[size:]
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        _fail(f"the request is not valid JSON ({error})", "invalid_json")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        _fail('expected a JSON object with an "inputs" list', "invalid_request")
    name = model.detector.spec.input.name
    label_spec = model.detector.spec.labels
    tensors = request["inputs"]
    if not label_spec:
        if len(tensors) != 1 or not isinstance(tensors[0], dict):
            _fail(f"expected exactly one input tensor, {name!r}")
        images = _input_tensor(tensors[0], binary, model, max_images)
        labels = None
    else:
        by_name = {t.get("name"): t for t in tensors if isinstance(t, dict)}
        if len(tensors) != 2 or set(by_name) != {name, label_spec.input}:
            _fail(
                f"this class-conditional model takes two input tensors, {name!r} and "
                f"{label_spec.input!r} (one class per image)"
            )
        images = _input_tensor(by_name[name], binary, model, max_images)
        labels = _labels_tensor(by_name[label_spec.input], len(images))

    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        _fail('"parameters" must be an object', "invalid_request")
    alpha = parameters.get("alpha")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            _fail(f"parameter alpha must be a number in (0, 1), got {alpha!r}", "invalid_alpha")
        try:
            alpha = check_alpha(alpha)
        except InputError as error:
            _fail(f"parameter {error}", "invalid_alpha")
    score = parameters.get("score")
    if score is not None and not isinstance(score, str):
        _fail(f"parameter score must be a string, got {score!r}", "invalid_request")
    binary_default = bool(parameters.get("binary_data_output", False))

    outputs: dict[str, bool] = {}
    for item in request.get("outputs") or [{"name": n} for n in DEFAULT_OUTPUTS]:
        if not isinstance(item, dict) or item.get("name") not in OUTPUTS:
            _fail(f"unknown output {item!r}; outputs are {list(OUTPUTS)}", "invalid_request")
        item_parameters = item.get("parameters") or {}
        outputs[item["name"]] = bool(item_parameters.get("binary_data", binary_default))
    return {
        "images": images,
        "labels": labels,
        "score": score,
        "alpha": alpha,
        "outputs": outputs,
        "id": request.get("id"),
    }


def _labels_tensor(tensor: dict, count: int) -> list:
    """The labels input of a conditional model: integers as JSON data, one per image."""
    if tensor.get("datatype") not in ("INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16"):
        _fail(f"labels datatype must be an integer type (INT64), got {tensor.get('datatype')!r}")
    if tensor.get("shape") != [count]:
        _fail(f"labels shape {tensor.get('shape')!r}; one class per image needs [{count}]")
    if "binary_data_size" in (tensor.get("parameters") or {}):
        _fail("send labels as JSON data (binary data is accepted for the images only)")
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != count:
        _fail(f"labels data must be a list of {count} whole numbers", "invalid_labels")
    return data


def _input_tensor(tensor: dict, binary: bytes, model: ServedModel, max_images: int) -> np.ndarray:
    name = model.detector.spec.input.name
    channels, height, width = model.detector.input_shape
    if tensor.get("name") != name:
        _fail(f"input is named {tensor.get('name')!r}; this model's input is {name!r}")
    if tensor.get("datatype") != "UINT8":
        _fail(f"input datatype must be UINT8, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    wanted = [channels, height, width]
    ok_shape = (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and (shape[1:] == wanted or (channels == 1 and shape[1:] == wanted[1:]))
    )
    if not ok_shape:
        accepted = f"[B, {channels}, {height}, {width}]" + (
            f" or [B, {height}, {width}]" if channels == 1 else ""
        )
        _fail(f"input shape {shape!r}; this model takes {accepted}")
    count = shape[0]
    if count < 1:
        _fail("the input holds no images", "no_images")
    if count > max_images:
        raise ApiError(
            413, "too_many_images", f"{count} images in one request; the limit is {max_images}"
        )
    size = count * channels * height * width
    parameters = tensor.get("parameters") or {}
    if "binary_data_size" in parameters:
        declared = parameters["binary_data_size"]
        if declared != size or len(binary) != size:
            _fail(
                f"binary input of {len(binary)} bytes (declared {declared!r}) for shape "
                f"{shape}, which needs {size}"
            )
        array = np.frombuffer(binary, dtype=np.uint8)
    else:
        if binary:
            _fail("binary data follows the JSON header but no input declares binary_data_size")
        data = tensor.get("data")
        try:
            array = np.asarray(data)
        except ValueError:
            array = np.asarray(None)
        if array.dtype.kind not in "iuf":
            _fail("input data must be numbers (0..255)", "invalid_pixels")
        if array.size != size:
            _fail(f"input data holds {array.size} values; shape {shape} needs {size}")
        array = pixels(array.ravel(), "input")
    return array.reshape(count, channels, height, width)
