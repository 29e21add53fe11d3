"""Image data sources named by one spec string, loaded as uint8 (N, C, H, W) with optional labels.

    digits, digits:train, digits:test   scikit-learn's bundled 8x8 digits, 0..255, a fixed split
    idx:PATH                            an IDX images file (MNIST format, gzipped or not); its
                                        labels file beside it is found by name (images -> labels,
                                        idx3 -> idx1)
    folder:DIR                          PNG, JPEG, BMP, TIFF files under DIR (recursive); when every
                                        file
                                        sits in a sub-folder named by an integer, that is its label
    npy:FILE                            an array (N, H, W), (N, C, H, W) or (N, H, W, C); labels
                                        from
                                        FILE's sibling `<stem>_labels.npy` when present

These live in `detectors` rather than `training` because scoring jobs and `normalcy calibrate` read
the
same sources in an install without PyTorch.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .images import as_uint8_batch, decode_image, pil_to_array

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DIGITS_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class ImageSet:
    """Images (N, C, H, W) uint8, labels (N,) int64 or None, and where they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    names: tuple[str, ...] | None = None  # file names, for folder sources

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """sha256 of the pixels (and labels): two identical data sets share it."""
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()

    def select(self, mask_or_index) -> ImageSet:
        labels = None if self.labels is None else self.labels[mask_or_index]
        names = None if self.names is None else tuple(np.asarray(self.names)[mask_or_index])
        return ImageSet(self.images[mask_or_index], labels, self.source, names)

    def with_classes(self, classes) -> ImageSet:
        """Keep only images whose label is in `classes`."""
        if self.labels is None:
            msg = f"{self.source}: has no labels, so classes cannot be selected"
            raise InputError(msg)
        keep = np.isin(self.labels, list(classes))
        if not keep.any():
            msg = (
                f"{self.source}: no images of classes {sorted(classes)}; labels present: "
                f"{sorted(set(self.labels.tolist()))}"
            )
            raise InputError(msg)
        return self.select(keep)


def parse_classes(text: str | None) -> list[int] | None:
    """'0,1,7' -> [0, 1, 7]; None or '' -> None."""
    if not text:
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        msg = f"classes must be comma-separated integers, got {text!r}"
        raise InputError(msg) from None


def load(spec: str) -> ImageSet:
    """Load the data set a spec string names (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        return load_digits(arg or "all")
    if kind in ("idx", "folder", "npy") and not arg:
        msg = f"data spec {spec!r} needs a path: {kind}:PATH"
        raise InputError(msg)
    if kind == "idx":
        return load_idx(arg)
    if kind == "folder":
        return load_folder(arg)
    if kind == "npy":
        return load_npy(arg)
    msg = f"unknown data spec {spec!r}; use digits[:train|:test], idx:PATH, folder:DIR or npy:FILE"
    raise InputError(msg)


def load_digits(split: str = "all") -> ImageSet:
    """scikit-learn's bundled 8x8 digits (0..16) rescaled to 0..255 uint8; a fixed split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("all", "train", "test"):
        msg = f"digits split must be train or test, got {split!r}"
        raise InputError(msg)
    digits = sk_load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    if split != "all":
        index = np.arange(len(images))
        train, test = train_test_split(
            index, test_size=DIGITS_TEST_FRACTION, random_state=0, stratify=labels
        )
        chosen = np.sort(train if split == "train" else test)
        images, labels = images[chosen], labels[chosen]
    return ImageSet(images, labels, f"digits:{split}")


# --- IDX ---------------------------------------------------------------------------------------
def _open_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as error:
        msg = f"{path}: cannot read ({error.strerror or error})"
        raise InputError(msg) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:
            msg = f"{path}: corrupt or truncated gzip data ({error})"
            raise InputError(msg) from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 0x0000 08 NDIM), gzipped or not."""
    path = Path(path)
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        msg = f"{path}: not an IDX file (bad magic {data[:4].hex() or 'empty'}; expected 000008NN)"
        raise InputError(msg)
    if data[2] != 0x08:
        msg = (
            f"{path}: IDX data type 0x{data[2]:02x} is not supported; "
            "expected unsigned bytes (0x08)"
        )
        raise InputError(msg)
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        msg = f"{path}: truncated IDX header (expected {ndim} dimension sizes)"
        raise InputError(msg)
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        msg = (
            f"{path}: truncated or oversized IDX file: shape {shape} needs {expected} bytes "
            f"of data, found {len(data) - header}"
        )
        raise InputError(msg)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def labels_path_for(images_path: Path) -> Path | None:
    """The labels file beside an IDX images file, found by the MNIST naming convention."""
    name = images_path.name
    for old, new in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if old in name:
            candidate = images_path.with_name(name.replace(old, new))
            if candidate.exists():
                return candidate
    return None


def load_idx(path: str | Path) -> ImageSet:
    path = Path(path)
    array = read_idx(path)
    if array.ndim == 3:
        images = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        images = np.moveaxis(array, -1, 1)
    else:
        msg = f"{path}: IDX images must be (N, H, W) or (N, H, W, C), got {array.shape}"
        raise InputError(msg)
    labels = None
    label_path = labels_path_for(path)
    if label_path is not None:
        labels = read_idx(label_path)
        if labels.ndim != 1 or len(labels) != len(images):
            msg = f"{label_path}: {labels.shape} labels for {len(images)} images in {path}"
            raise InputError(msg)
        labels = labels.astype(np.int64)
    return ImageSet(np.ascontiguousarray(images), labels, f"idx:{path}")


# --- folders and arrays ------------------------------------------------------------------------
def image_files(directory: str | Path) -> list[Path]:
    """Image files under `directory`, recursively, in a stable order."""
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"{directory}: not a directory"
        raise InputError(msg)
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def load_folder(directory: str | Path) -> ImageSet:
    directory = Path(directory)
    files = image_files(directory)
    if not files:
        msg = f"{directory}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})"
        raise InputError(msg)
    decoded = [decode_image(f.read_bytes(), name=str(f)) for f in files]
    grey = all(image.mode in ("L", "1", "I;16", "I") for image in decoded)
    channels = 1 if grey else 3
    width, height = decoded[0].size
    arrays = []
    for f, image in zip(files, decoded, strict=True):
        if image.size != (width, height):
            msg = (
                f"{f}: size {image.size[0]}x{image.size[1]} differs from {width}x{height} "
                f"of {files[0]}; a folder data set needs images of one size"
            )
            raise InputError(msg)
        arrays.append(
            pil_to_array(image, channels=channels, height=height, width=width, name=str(f))
        )
    parents = [f.parent.relative_to(directory).parts for f in files]
    labels = None
    if all(len(p) == 1 and p[0].lstrip("-").isdigit() for p in parents):
        labels = np.array([int(p[0]) for p in parents], dtype=np.int64)
    names = tuple(str(f.relative_to(directory)) for f in files)
    return ImageSet(np.stack(arrays), labels, f"folder:{directory}", names)


def load_npy(path: str | Path) -> ImageSet:
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        msg = f"{path}: not a readable .npy array ({error})"
        raise InputError(msg) from None
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in (1, 3) and array.shape[-1] in (1, 3):
        array = np.moveaxis(array, -1, 1)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        msg = (
            f"{path}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3, "
            f"got {array.shape}"
        )
        raise InputError(msg)
    try:
        images = as_uint8_batch(
            array, channels=array.shape[1], height=array.shape[2], width=array.shape[3]
        )
    except InputError as error:
        msg = f"{path}: {error}"
        raise InputError(msg) from None
    labels = None
    label_path = path.with_name(f"{path.stem}_labels.npy")
    if label_path.exists():
        labels = np.load(label_path, allow_pickle=False)
        if labels.ndim != 1 or len(labels) != len(images):
            msg = f"{label_path}: {labels.shape} labels for {len(images)} images in {path}"
            raise InputError(msg)
        labels = labels.astype(np.int64)
    return ImageSet(images, labels, f"npy:{path}")
