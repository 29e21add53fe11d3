"""Input complexity: the code length of an image under a generic lossless compressor, in bits/dim.

Raw likelihood is dominated by how simple an image is (a model fitted to Fashion-MNIST finds MNIST
digits *more* likely). Subtracting a compressor's code length, in the same units, removes most of
that (Serra et al., "Input complexity and out-of-distribution detection", ICLR 2020).
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from .errors import InputError


def _zlib_bits(image: np.ndarray) -> int:
    return 8 * len(zlib.compress(np.ascontiguousarray(image).tobytes(), 9))


def _png_bits(image: np.ndarray) -> int:
    # (C, H, W) -> a PIL image of mode L or RGB
    pil = Image.fromarray(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return 8 * buffer.tell()


_CODERS = {"zlib": _zlib_bits, "png": _png_bits}


def code_length_bits_per_dim(images: np.ndarray, compressor: str = "zlib") -> np.ndarray:
    """Code length of each uint8 image (B, C, H, W) in bits per dimension, shape (B,)."""
    if compressor not in _CODERS:
        msg = f"unknown compressor {compressor!r}; known: {sorted(_CODERS)}"
        raise InputError(msg)
    if images.dtype != np.uint8 or images.ndim != 4:
        msg = f"expected uint8 images (B, C, H, W), got {images.dtype} {images.shape}"
        raise InputError(msg)
    coder = _CODERS[compressor]
    dims = images[0].size
    return np.array([coder(image) / dims for image in images], dtype=np.float64)
