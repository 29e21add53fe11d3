"""Folders of image files (PNG, JPEG, BMP, TIFF), walked recursively in a stable order.

The folder-label rule, the same on every path (training, calibrate, evaluate, report, score): an
image's label is the integer name of its own folder, so `a/3/x.png` is labelled 3 whether the data
is `folder:a`, `folder:a/3` or the file itself. A data set has labels when every image has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..images import InputSpec, decode_image
from .imageset import ImageSet

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def walk(directory: str) -> Iterator[str]:
    """Image files under `directory`, depth first, sorted by name within each directory; lazily,
    so a folder of millions of files costs no memory. Unreadable sub-directories hold nothing."""
    try:
        with os.scandir(directory) as scan:
            entries = sorted((entry.name, entry.is_dir()) for entry in scan)
    except OSError:
        return
    for name, is_dir in entries:
        path = os.path.join(directory, name)
        if is_dir:
            yield from walk(path)
        elif is_image_file(name):
            yield path


def folder_label(path: str) -> int | None:
    """An image's label: the integer name of its own folder (`3/x.png` -> 3), else None."""
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return int(name) if name.isascii() and name.isdigit() else None


def read_image_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        msg = f"{path}: cannot read ({error.strerror or error})"
        raise InputError(msg) from None


def load_folder(directory: str | Path) -> ImageSet:
    """Every image under `directory`, all of one size; grey unless one of them has colour."""
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"{directory}: not a directory"
        raise InputError(msg)
    files = list(walk(str(directory)))
    if not files:
        msg = f"{directory}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})"
        raise InputError(msg)
    decoded = [decode_image(read_image_file(f), name=f) for f in files]
    grey = all(image.mode in ("L", "1", "I;16", "I") for image in decoded)
    width, height = decoded[0].size
    spec = InputSpec(1 if grey else 3, height, width)
    arrays = []
    for f, image in zip(files, decoded, strict=True):
        if image.size != (width, height):
            msg = (
                f"{f}: size {image.size[0]}x{image.size[1]} differs from {width}x{height} "
                f"of {files[0]}; a folder data set needs images of one size"
            )
            raise InputError(msg)
        arrays.append(spec.from_image(image, name=f))
    labels = [folder_label(f) for f in files]
    names = tuple(os.path.relpath(f, directory) for f in files)
    return ImageSet(
        np.stack(arrays),
        None if None in labels else np.array(labels, dtype=np.int64),
        f"folder:{directory}",
        names,
    )
