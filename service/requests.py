"""HTTP request bodies -> uint8 image batches (B, C, H, W) for one model, or a clear 4xx.

Accepted on POST /v1/models/{name}/score:
- multipart/form-data: every file part is one encoded image (PNG, JPEG, BMP or TIFF, one frame);
- application/json: {"images": [...]}, each a base64 string of an encoded image or a nested array
  of pixel values 0..255, shaped (H, W) for grey models or (C, H, W);
- image/* or application/octet-stream: the body is one encoded image.
Encoded images of another size or colour mode are converted as the bundle's preprocessing says, or
refused with the reason. Arrays must already have the model's shape: pixels are never guessed. The
input contract (InputSpec, the pixel rule, the conversion) is detectors.images'; this module adds
only HTTP: request limits and the error codes of the answers.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from detectors.errors import InputError, MultiFrameImage, UnsupportedImageFormat
from detectors.images import InputSpec, decode_image, open_image, to_uint8

from .errors import ApiError
from .settings import Settings

# Bodies below this parse on the event loop: a thread hop costs more than parsing a few images.
INLINE_PARSE_BYTES = 64 * 1024


async def parse(body_bytes: int, function, *args):
    """Call a parser inline for small bodies, in a worker thread for large ones."""
    if body_bytes < INLINE_PARSE_BYTES:
        return function(*args)
    return await run_in_threadpool(function, *args)


# With no max_pixels set, an encoded image may hold this many times the model's input pixels:
# 8x its width and height, room for any sensible photo of what a model of that size looks at.
PIXELS_PER_INPUT_PIXEL = 64
# JSON values beyond pixels and labels: parameters, tensor shapes, requested outputs.
JSON_VALUES_BESIDES_IMAGES = 1024


@dataclass(frozen=True)
class Limits:
    """What one request may send to one model: decoded pixels per encoded image (before
    decoding), images, and values in a JSON body (images x (the model's input size + a label))."""

    max_pixels_per_image: int
    max_images: int
    max_json_values: int

    @classmethod
    def of(cls, spec: InputSpec, settings: Settings) -> Limits:
        input_pixels = spec.height * spec.width
        per_image = settings.max_pixels or PIXELS_PER_INPUT_PIXEL * input_pixels
        images = settings.max_images_per_request
        return cls(per_image, images, images * (spec.channels * input_pixels + 1))  # + a label


@dataclass
class ParsedImages:
    images: np.ndarray  # uint8 (B, C, H, W)
    names: list[str | None]  # the client's file names (multipart), else None
    labels: list | None = None  # class labels from a JSON body (conditional models), unchecked


def check_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise ApiError(400, "no_images", "the request holds no images")
    if count > limits.max_images:
        msg = f"{count} images in one request; the limit is {limits.max_images}"
        raise ApiError(413, "too_many_images", msg)


def decode(data: bytes, spec: InputSpec, limits: Limits, name: str) -> np.ndarray:
    """One encoded image -> uint8 (C, H, W), converted per the bundle's preprocessing."""
    if not data:
        raise ApiError(400, "empty_image", f"{name}: empty file, expected an encoded image")
    try:  # the header alone gives the size: refuse bombs before decoding them
        with open_image(data, name) as header:
            width, height = header.size
    except Exception:
        width = height = 0  # let decode_image say what is wrong
    most = limits.max_pixels_per_image
    if width * height > most:
        pixels = width * height
        msg = f"{name}: {width}x{height} = {pixels} pixels exceeds the limit of {most} per image"
        raise ApiError(413, "image_too_large", msg)
    try:
        image = decode_image(data, max_pixels=most, name=name)
    except UnsupportedImageFormat as error:
        raise ApiError(415, "unsupported_image_format", str(error)) from None
    except MultiFrameImage as error:
        raise ApiError(400, "multi_frame_image", str(error)) from None
    except InputError as error:
        raise ApiError(400, "invalid_image", str(error)) from None
    try:
        return spec.from_image(image, name)
    except InputError as error:
        raise ApiError(400, "unsupported_image", str(error)) from None


def pixels(values: np.ndarray, name: str) -> np.ndarray:
    """Pixel values sent as numbers -> uint8 under the pixel rule, or a 400 invalid_pixels."""
    try:
        return to_uint8(values, name)
    except InputError as error:
        raise ApiError(400, "invalid_pixels", str(error)) from None


def pixel_array(value, spec: InputSpec, name: str) -> np.ndarray:
    """A nested list of pixel values -> uint8 (C, H, W); refuses NaN, fractions, out-of-range."""
    try:
        array = np.asarray(value)
    except ValueError:
        array = np.asarray(None)  # ragged lists
    if array.dtype.kind not in "iuf":
        msg = f"{name}: pixel values must be numbers in a rectangular nested array"
        raise ApiError(400, "invalid_pixels", msg)
    if array.ndim == 2 and spec.channels == 1:
        array = array[None]
    if array.shape != spec.shape:
        shapes = f"{spec.shape}" + (f" or {spec.shape[1:]}" if spec.channels == 1 else "")
        msg = f"{name}: array shape {array.shape}, the model takes {shapes}"
        raise ApiError(400, "invalid_shape", msg)
    return pixels(array, name)


def load_json(body: bytes, limits: Limits):
    """Parse a JSON body whose values the model could take, or refuse it before parsing.

    Parsed, every JSON value is a Python object of 30 to 60 bytes, ten or more times what its text
    costs: a 16 MiB flat array used to cost 150 MB. The values of a body are at most its commas
    plus one, counted without allocating, so a body that holds more values than the request's
    images could (max images x the model's input size) is refused unparsed; what is parsed costs
    memory in proportion to what the model takes, whatever the body limit.
    """
    values = body.count(b",") + 1
    if values > limits.max_json_values + JSON_VALUES_BESIDES_IMAGES:
        msg = (
            f"the JSON body holds up to {values} values; {limits.max_images} images of this "
            f"model's input size (and their labels) hold {limits.max_json_values}"
        )
        raise ApiError(413, "too_many_values", msg)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # ValueError: >4300 digits
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({error})") from None


def from_json(body: bytes, spec: InputSpec, limits: Limits) -> ParsedImages:
    document = load_json(body, limits)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        msg = 'expected a JSON object {"images": [...]} (base64 strings or nested pixel arrays)'
        raise ApiError(400, "invalid_request", msg)
    unknown = sorted(set(document) - {"images", "labels"})
    if unknown:
        msg = (
            f"unknown field(s) {unknown}; the body holds images (and labels); score options go "
            "in the query (score, alpha, heatmap)"
        )
        raise ApiError(400, "invalid_request", msg)
    labels = document.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise ApiError(400, "invalid_labels", "labels must be a list, one class per image")
    items = document["images"]
    check_count(len(items), limits)
    arrays = []
    for i, item in enumerate(items):
        name = f"images[{i}]"
        if isinstance(item, str):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid_base64", f"{name}: not valid base64") from None
            arrays.append(decode(data, spec, limits, name))
        elif isinstance(item, list):
            arrays.append(pixel_array(item, spec, name))
        else:
            msg = f"{name}: expected a base64 string or a nested array, got {type(item).__name__}"
            raise ApiError(400, "invalid_request", msg)
    return ParsedImages(np.stack(arrays), [None] * len(arrays), labels)


def from_files(files: list[tuple[str, bytes]], spec: InputSpec, limits: Limits) -> ParsedImages:
    check_count(len(files), limits)
    arrays = [decode(data, spec, limits, name) for name, data in files]
    return ParsedImages(np.stack(arrays), [name for name, _ in files])
