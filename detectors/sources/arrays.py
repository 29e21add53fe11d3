"""Images stored as one array (`.npy`, IDX): the layout rule, and rows read by offset.

Stored layouts are (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3. An array is channels
first unless its second axis cannot be a channel count and its last one can, so (N, 3, 5, 6) is
three-channel 5x6 and (N, 5, 6, 3) is 5x6 RGB. Labels, when the source has them, sit in a second
file beside the images: one whole number per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


def channels_first(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and not (shape[1] not in (1, 3) and shape[-1] in (1, 3))


def image_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """(C, H, W) of the images in an array of `shape`; InputError for any other layout."""
    if len(shape) == 3:
        return 1, shape[1], shape[2]
    if len(shape) == 4:
        c, h, w = shape[1:] if channels_first(shape) else (shape[3], shape[1], shape[2])
        if c in (1, 3):
            return c, h, w
    msg = (
        f"{name}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3, "
        f"got {shape}"
    )
    raise InputError(msg)


def as_channels_first(array: np.ndarray) -> np.ndarray:
    """Stored images (see the module docstring) as (N, C, H, W), a view where it can be."""
    if array.ndim == 3:
        return array[:, None]
    return array if channels_first(array.shape) else np.moveaxis(array, -1, 1)


def checked_labels(labels: np.ndarray, count: int, labels_path: Path, images: str) -> np.ndarray:
    """Labels read from `labels_path` for `count` images in `images`: one each, or InputError."""
    if labels.ndim != 1 or len(labels) != count:
        msg = f"{labels_path}: {labels.shape} labels for {count} images in {images}"
        raise InputError(msg)
    return labels


@dataclass(frozen=True)
class ArrayFile:
    """Where the rows of an array input lie: a raw array at `offset` in `data_path`."""

    path: str  # the input as the user named it
    data_path: str  # the file holding the raw array (a decompressed copy for a gzipped IDX)
    offset: int
    dtype: str
    shape: tuple[int, ...]  # as stored: (N, H, W), (N, C, H, W) or (N, H, W, C)
    fortran_order: bool = False

    @property
    def rows(self) -> int:
        return self.shape[0]

    def read_rows(self, rows: list[int]) -> np.ndarray:
        """The stored rows as (n, C, H, W), copied out of a memory map that is closed again
        (memory stays flat however large the file)."""
        mapped = np.memmap(
            self.data_path,
            dtype=np.dtype(self.dtype),
            mode="r",
            offset=self.offset,
            shape=self.shape,
            order="F" if self.fortran_order else "C",
        )
        try:
            array = np.array(mapped[rows])
        finally:
            del mapped
        return as_channels_first(array)
