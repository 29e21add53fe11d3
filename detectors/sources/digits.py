"""scikit-learn's bundled handwritten digits: the embedded data set that needs no download."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .imageset import ImageSet

DIGITS_TEST_FRACTION = 0.25


def load_digits(split: str = "all") -> ImageSet:
    """The 8x8 digits (0..16) rescaled to 0..255 uint8; a fixed stratified 75/25 split."""
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
