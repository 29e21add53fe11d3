"""Open Inference Protocol v2 request bodies -> checked images, labels and options, or a 4xx.

The JSON header (and, with the binary tensor extension, the raw bytes after it) of one inference
request: one UINT8 image tensor, the labels tensor of a class-conditional model, parameters (score,
alpha, binary_data_output) and the requested outputs.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from detectors.calibration import check_alpha
from detectors.errors import InputError

from .errors import ApiError
from .model import ServedModel
from .requests import Limits, load_json, pixels

OUTPUTS = {"score": "FP64", "p_value": "FP64", "is_anomaly": "BOOL", "heatmap": "FP32"}
DEFAULT_OUTPUTS = ("score", "p_value", "is_anomaly")


def _fail(message: str, code: str = "invalid_tensor") -> NoReturn:
    raise ApiError(400, code, message)


def parse_request(
    body: bytes, header_length: str | None, model: ServedModel, limits: Limits
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
    request = load_json(body, limits)  # the JSON header only: binary data has no values to parse
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        _fail('expected a JSON object with an "inputs" list', "invalid_request")
    name = model.detector.spec.input.name
    label_spec = model.detector.spec.labels
    tensors = request["inputs"]
    if not label_spec:
        if len(tensors) != 1 or not isinstance(tensors[0], dict):
            _fail(f"expected exactly one input tensor, {name!r}")
        images = _input_tensor(tensors[0], binary, model, limits.max_images)
        labels = None
    else:
        by_name = {_name(t): t for t in tensors if isinstance(t, dict)}
        if len(tensors) != 2 or set(by_name) != {name, label_spec.input}:
            _fail(
                f"this class-conditional model takes two input tensors, {name!r} and "
                f"{label_spec.input!r} (one class per image)"
            )
        images = _input_tensor(by_name[name], binary, model, limits.max_images)
        labels = _labels_tensor(by_name[label_spec.input], len(images))

    parameters = _object(request.get("parameters"), '"parameters"')
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
    binary_default = _flag(parameters.get("binary_data_output", False), "binary_data_output")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        _fail(f'"id" must be a string, got {request_id!r}', "invalid_request")

    requested = request.get("outputs")
    if requested is None:
        requested = [{"name": n} for n in DEFAULT_OUTPUTS]
    if not isinstance(requested, list):
        _fail('"outputs" must be a list of {"name": ...} objects', "invalid_request")
    outputs: dict[str, bool] = {}
    for item in requested:
        if not isinstance(item, dict) or _name(item) not in OUTPUTS:
            _fail(f"unknown output {item!r}; outputs are {list(OUTPUTS)}", "invalid_request")
        item_parameters = _object(item.get("parameters"), f"output {item['name']!r} parameters")
        binary = item_parameters.get("binary_data", binary_default)
        outputs[item["name"]] = _flag(binary, "binary_data")
    return {
        "images": images,
        "labels": labels,
        "score": score,
        "alpha": alpha,
        "outputs": outputs,
        "id": request_id,
    }


def _name(tensor: dict) -> str | None:
    name = tensor.get("name")
    return name if isinstance(name, str) else None


def _object(value, what: str) -> dict:
    """An optional JSON object: {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(f"{what} must be an object, got {value!r}", "invalid_request")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"parameter {what} must be true or false, got {value!r}", "invalid_request")
    return value


def _labels_tensor(tensor: dict, count: int) -> list:
    """The labels input of a conditional model: integers as JSON data, one per image."""
    if tensor.get("datatype") not in ("INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16"):
        _fail(f"labels datatype must be an integer type (INT64), got {tensor.get('datatype')!r}")
    if tensor.get("shape") != [count]:
        _fail(f"labels shape {tensor.get('shape')!r}; one class per image needs [{count}]")
    if "binary_data_size" in _object(tensor.get("parameters"), "labels parameters"):
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
    parameters = _object(tensor.get("parameters"), "input parameters")
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
