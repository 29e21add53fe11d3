"""Turning what users send (encoded files, arrays) into the uint8 (B, C, H, W) a bundle takes."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

# Decompression bombs: refuse images with more pixels than this before decoding them.
DEFAULT_MAX_PIXELS = 16_000_000
_MODES = {1: "L", 3: "RGB"}


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image"
) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, BMP, TIFF, ...) fully, or raise InputError."""
    if not data:
        msg = f"{name}: empty file, expected an encoded image"
        raise InputError(msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                msg = (
                    f"{name}: {width}x{height} = {width * height} pixels "
                    f"exceeds the limit of {max_pixels}"
                )
                raise InputError(msg)
            image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        msg = f"{name}: not a readable image (PNG, JPEG, BMP, TIFF, ...) or too large"
        raise InputError(msg) from None
    except (OSError, SyntaxError, ValueError) as error:
        msg = f"{name}: corrupt or truncated image ({error})"
        raise InputError(msg) from None
    return image


def pil_to_array(
    image: Image.Image,
    *,
    channels: int,
    height: int,
    width: int,
    resize: bool = True,
    convert: bool = True,
    name: str = "image",
) -> np.ndarray:
    """Convert a PIL image to uint8 (C, H, W) in the bundle's colour mode and size."""
    mode = _MODES[channels]
    if image.mode != mode:
        if not convert:
            msg = f"{name}: colour mode {image.mode} but the model takes {mode}"
            raise InputError(msg)
        if image.mode.startswith("I"):
            # 16/32-bit grey: scale to 8 bits rather than clip.
            array = np.asarray(image, dtype=np.float64)
            top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
            image = Image.fromarray(np.round(array / top * 255.0).astype(np.uint8))
        try:
            image = image.convert(mode)
        except ValueError:
            msg = f"{name}: cannot convert colour mode {image.mode} to {mode}"
            raise InputError(msg) from None
    if image.size != (width, height):
        if not resize:
            msg = (
                f"{name}: size {image.size[0]}x{image.size[1]} but the model takes {width}x{height}"
            )
            raise InputError(msg)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else np.ascontiguousarray(np.moveaxis(array, -1, 0))


def as_uint8_batch(images, *, channels: int, height: int, width: int) -> np.ndarray:
    """Check an array of images and return it as uint8 (B, C, H, W).

    Accepts (B, C, H, W), or (B, H, W) for one channel. Non-uint8 input must be finite, whole and
    within 0..255: values are never silently clipped or rescaled.
    """
    array = np.asarray(images)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        msg = f"images must be a numeric array, got dtype {array.dtype}"
        raise InputError(msg)
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    expected = (channels, height, width)
    if array.ndim != 4 or array.shape[1:] != expected:
        msg = f"images must have shape (B, {channels}, {height}, {width}), got {array.shape}"
        raise InputError(msg)
    if array.shape[0] == 0:
        msg = "no images given"
        raise InputError(msg)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        msg = "images contain NaN or infinite values"
        raise InputError(msg)
    if values.min() < 0 or values.max() > 255:
        msg = f"pixel values must be within 0..255, got {values.min():g}..{values.max():g}"
        raise InputError(msg)
    if not np.all(values == np.round(values)):
        msg = "pixel values must be whole numbers 0..255 (uint8 levels), got fractions"
        raise InputError(msg)
    return values.astype(np.uint8)
