"""A loaded data set: uint8 images (N, C, H, W), their labels when the source has them, and where
they came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


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
