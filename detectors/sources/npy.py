"""`.npy` arrays of images (N, H, W), (N, C, H, W) or (N, H, W, C), any numeric dtype under the
pixel rule; the labels of `x.npy` are in `x_labels.npy` beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..images import to_uint8
from .arrays import ArrayFile, as_channels_first, checked_labels, image_shape
from .imageset import ImageSet


def labels_path(images_path: str | Path) -> Path:
    images_path = Path(images_path)
    return images_path.with_name(f"{images_path.stem}_labels.npy")


def read_labels(images_path: str | Path, count: int) -> np.ndarray | None:
    """The labels of the `count` images in `images_path` (memory-mapped), or None when the labels
    file is not beside it."""
    path = labels_path(images_path)
    if not path.exists():
        return None
    try:
        labels = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        msg = f"{path}: cannot read labels ({error})"
        raise InputError(msg) from None
    return checked_labels(labels, count, path, str(images_path))


def _check_numeric(dtype: np.dtype, path) -> None:
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        msg = f"{path}: .npy holds dtype {dtype}; images must be numeric"
        raise InputError(msg)


def open_npy(path: str) -> ArrayFile:
    """The rows of a `.npy` file, read by offset: only its header is read here."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as error:
        msg = f"{path}: not a readable .npy array ({error})"
        raise InputError(msg) from None
    _check_numeric(dtype, path)
    return ArrayFile(path, path, offset, dtype.str, tuple(shape), bool(fortran_order))


def load_npy(path: str | Path) -> ImageSet:
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        msg = f"{path}: not a readable .npy array ({error})"
        raise InputError(msg) from None
    _check_numeric(array.dtype, path)
    image_shape(array.shape, str(path))
    images = np.ascontiguousarray(to_uint8(as_channels_first(array), str(path)))
    labels = read_labels(path, len(images))
    return ImageSet(images, None if labels is None else labels.astype(np.int64), f"npy:{path}")
