"""Turning request bodies into uint8 image batches (B, C, H, W) for one model, or a clear 4xx.

Accepted on POST /v1/models/{name}/score:
- multipart/form-data: every file part is one encoded image (PNG, JPEG, BMP, TIFF, ...);
- application/json: {"images": [...]}, each a base64 string of an encoded image or a nested array
  of pixel values 0..255, shaped (H, W) for grey models or (C, H, W);
- image/* or application/octet-stream: the body is one encoded image.
Encoded images of another size or colour mode are converted as the bundle's preprocessing says, or
refused with the reason. Arrays must already have the model's shape: pixels are never guessed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from detectors.errors import InputError
from detectors.images import decode_image, pil_to_array

from .errors import ApiError

# Bodies below this parse on the event loop: a thread hop costs more than parsing a few images.
INLINE_PARSE_BYTES = 64 * 1024


async def parse(body_bytes: int, function, *args):
    """Call a parser inline for small bodies, in a worker thread for large ones."""
    if body_bytes < INLINE_PARSE_BYTES:
        return function(*args)
    return await run_in_threadpool(function, *args)


@dataclass(frozen=True)
class ImageSpec:
    """What a model takes and what a request may send it."""

    channels: int
    height: int
    width: int
    resize: bool
    convert: bool
    max_pixels: int
    max_images: int

    @classmethod
    def for_model(cls, metadata: dict, *, max_pixels: int, max_images: int) -> ImageSpec:
        inp, pre = metadata["input"], metadata["preprocessing"]
        return cls(
            inp["channels"],
            inp["height"],
            inp["width"],
            resize=pre["resize"] != "refuse",
            convert=pre["color"] != "refuse",
            max_pixels=max_pixels,
            max_images=max_images,
        )


@dataclass
class ParsedImages:
    images: np.ndarray  # uint8 (B, C, H, W)
    names: list[str | None]  # the client's file names (multipart), else None
    labels: list | None = None  # class labels from a JSON body (conditional models), unchecked


def check_count(count: int, spec: ImageSpec) -> None:
    if count == 0:
        raise ApiError(400, "no_images", "the request holds no images")
    if count > spec.max_images:
        msg = f"{count} images in one request; the limit is {spec.max_images}"
        raise ApiError(413, "too_many_images", msg)


def decode(data: bytes, spec: ImageSpec, name: str) -> np.ndarray:
    """One encoded image -> uint8 (C, H, W), converted per the bundle's preprocessing."""
    if not data:
        raise ApiError(400, "empty_image", f"{name}: empty file, expected an encoded image")
    try:  # the header alone gives the size: refuse bombs before decoding them
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:
        width = height = 0  # let decode_image say what is wrong
    if width * height > spec.max_pixels:
        pixels = width * height
        msg = f"{name}: {width}x{height} = {pixels} pixels exceeds the limit of {spec.max_pixels}"
        raise ApiError(413, "image_too_large", msg)
    try:
        image = decode_image(data, max_pixels=spec.max_pixels, name=name)
    except InputError as error:
        raise ApiError(400, "invalid_image", str(error)) from None
    try:
        return pil_to_array(
            image,
            channels=spec.channels,
            height=spec.height,
            width=spec.width,
            resize=spec.resize,
            convert=spec.convert,
            name=name,
        )
    except InputError as error:
        raise ApiError(400, "unsupported_image", str(error)) from None


def pixel_array(value, spec: ImageSpec, name: str) -> np.ndarray:
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
    expected = (spec.channels, spec.height, spec.width)
    if array.shape != expected:
        shapes = f"{expected}" + (f" or {expected[1:]}" if spec.channels == 1 else "")
        msg = f"{name}: array shape {array.shape}, the model takes {shapes}"
        raise ApiError(400, "invalid_shape", msg)
    return to_uint8(array, name)


def to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ApiError(400, "invalid_pixels", f"{name}: pixel values include NaN or infinity")
    if values.size and (values.min() < 0 or values.max() > 255):
        msg = f"{name}: pixel values must be within 0..255, got {values.min():g}..{values.max():g}"
        raise ApiError(400, "invalid_pixels", msg)
    if not np.all(values == np.round(values)):
        raise ApiError(400, "invalid_pixels", f"{name}: pixel values must be whole numbers 0..255")
    return values.astype(np.uint8)


def from_json(body: bytes, spec: ImageSpec) -> ParsedImages:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({error})") from None
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
    check_count(len(items), spec)
    arrays = []
    for i, item in enumerate(items):
        name = f"images[{i}]"
        if isinstance(item, str):
            try:
                data = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "invalid_base64", f"{name}: not valid base64") from None
            arrays.append(decode(data, spec, name))
        elif isinstance(item, list):
            arrays.append(pixel_array(item, spec, name))
        else:
            msg = f"{name}: expected a base64 string or a nested array, got {type(item).__name__}"
            raise ApiError(400, "invalid_request", msg)
    return ParsedImages(np.stack(arrays), [None] * len(arrays), labels)


def from_files(files: list[tuple[str, bytes]], spec: ImageSpec) -> ParsedImages:
    check_count(len(files), spec)
    arrays = [decode(data, spec, name) for name, data in files]
    return ParsedImages(np.stack(arrays), [name for name, _ in files])
