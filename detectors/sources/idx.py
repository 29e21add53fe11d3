"""IDX files (the MNIST format), gzipped or not: magic 0x0000 08 NDIM, NDIM big-endian sizes, then
unsigned bytes. The labels of `train-images-idx3-ubyte[.gz]` are in `train-labels-idx1-ubyte[.gz]`
beside it (found by name: images -> labels, idx3 -> idx1)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import InputError
from .arrays import ArrayFile, as_channels_first, checked_labels, image_shape
from .imageset import ImageSet

GZIP_MAGIC = b"\x1f\x8b"
MAX_HEADER = 4 + 4 * 255


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        msg = f"{path}: cannot read ({error.strerror or error})"
        raise InputError(msg) from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            msg = f"{path}: corrupt or truncated gzip data ({error})"
            raise InputError(msg) from None
    return raw


def parse_header(head: bytes, size: int, path) -> tuple[tuple[int, ...], int]:
    """(shape, data offset) of an IDX file of unsigned bytes that starts with `head` and holds
    `size` bytes (decompressed); InputError naming `path` when it is not one."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        msg = f"{path}: not an IDX file (bad magic {head[:4].hex() or 'empty'}; expected 000008NN)"
        raise InputError(msg)
    if head[2] != 0x08:
        msg = (
            f"{path}: IDX data type 0x{head[2]:02x} is not supported; "
            "expected unsigned bytes (0x08)"
        )
        raise InputError(msg)
    ndim = head[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(head) < offset:
        msg = f"{path}: truncated IDX header (expected {ndim} dimension sizes)"
        raise InputError(msg)
    shape = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if size - offset != expected:
        msg = (
            f"{path}: truncated or oversized IDX file: shape {shape} needs {expected} bytes "
            f"of data, found {size - offset}"
        )
        raise InputError(msg)
    return shape, offset


def is_idx(path: str) -> bool:
    """Whether `path` starts like an IDX file of images (magic 0x0000 08 NDIM), gzipped or not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == GZIP_MAGIC:
                f.seek(0)
                with gzip.open(f) as g:
                    head = g.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and 1 <= head[3] <= 4


def read_idx(path: str | Path) -> np.ndarray:
    """The whole array of an IDX file, gzipped or not."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    shape, offset = parse_header(data[:MAX_HEADER], len(data), path)
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def open_idx(path: str, work_dir: Path) -> ArrayFile:
    """The rows of an IDX file, read by offset; a gzipped one is decompressed once into `work_dir`
    (streamed; a resumed job finds the copy again)."""
    data_path = path
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    if gzipped:
        stat = os.stat(path)
        tag = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        data_path = str(work_dir / f"idx-{tag}.raw")
        if not os.path.exists(data_path):
            tmp = f"{data_path}.tmp"
            try:
                with gzip.open(path) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (OSError, EOFError) as error:
                msg = f"{path}: corrupt or truncated gzip data ({error})"
                raise InputError(msg) from None
            os.replace(tmp, data_path)
    with open(data_path, "rb") as f:
        head = f.read(MAX_HEADER)
    shape, offset = parse_header(head, os.path.getsize(data_path), path)
    return ArrayFile(path, data_path, offset, "|u1", shape)


def labels_path(images_path: str | Path) -> Path | None:
    """The labels file beside an IDX images file, found by the MNIST naming convention."""
    images_path = Path(images_path)
    name = images_path.name
    for old, new in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if old in name:
            candidate = images_path.with_name(name.replace(old, new))
            if candidate.exists():
                return candidate
    return None


def read_labels(images_path: str | Path, count: int) -> np.ndarray | None:
    """The labels of the `count` images in an IDX images file, or None when it has none."""
    path = labels_path(images_path)
    if path is None:
        return None
    return checked_labels(read_idx(path), count, path, str(images_path))


def load_idx(path: str | Path) -> ImageSet:
    path = Path(path)
    array = read_idx(path)
    image_shape(array.shape, str(path))
    images = np.ascontiguousarray(as_channels_first(array))
    labels = read_labels(path, len(images))
    return ImageSet(images, None if labels is None else labels.astype(np.int64), f"idx:{path}")
