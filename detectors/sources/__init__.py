"""The one set of image readers, named by one spec string everywhere on the command line; training,
`normalcy calibrate`, `evaluate`, `report` and the batch jobs all read through them.

    digits, digits:train, digits:test   scikit-learn's bundled 8x8 digits, 0..255, a fixed split
                                        (digits.py)
    idx:PATH                            an IDX images file (MNIST format, gzipped or not); its
                                        labels file beside it is found by name (idx.py)
    folder:DIR                          PNG, JPEG, BMP, TIFF files under DIR (recursive); an image's
                                        label is the integer name of its own folder (folder.py)
    npy:FILE                            an array (N, H, W), (N, C, H, W) or (N, H, W, C); labels
                                        from FILE's sibling `<stem>_labels.npy` (npy.py)

`load(spec)` reads a whole data set into memory (ImageSet); the batch jobs stream the same files
through the same modules (`folder.walk`, `idx.open_idx`, `npy.open_npy`, `ArrayFile.read_rows`).
They live in `detectors` rather than `training` because scoring jobs and `normalcy calibrate` read
them in an install without PyTorch.
"""

from __future__ import annotations

from ..errors import InputError
from .digits import load_digits
from .folder import load_folder
from .idx import load_idx, read_idx
from .imageset import ImageSet
from .npy import load_npy

__all__ = [
    "ImageSet",
    "load",
    "load_digits",
    "load_folder",
    "load_idx",
    "load_npy",
    "parse_classes",
    "read_idx",
]


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
