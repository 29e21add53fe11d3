"""Training data: a spec string -> normal images -> deterministic train / validation / calibration.

The loaders themselves live in `detectors.sources` (scoring jobs need them without torch); this
module adds what only training needs: class selection and seeded splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.errors import InputError
from detectors.sources import ImageSet, load, parse_classes

__all__ = ["ImageSet", "Splits", "load", "parse_classes", "split"]


@dataclass(frozen=True)
class Splits:
    """Disjoint parts of the normal data: fit on train, stop on validation, calibrate on the
    calibration part."""

    train: ImageSet
    validation: ImageSet
    calibration: ImageSet


def split(
    data: ImageSet, *, seed: int = 0, validation: float = 0.1, calibration: float = 0.1
) -> Splits:
    """Shuffle with `seed` and cut; the same data and seed always give the same splits."""
    n = len(data)
    n_val = max(1, round(n * validation))
    n_cal = max(1, round(n * calibration))
    if n - n_val - n_cal < 1:
        msg = (
            f"{data.source}: {n} images are too few to split into train, validation and calibration"
        )
        raise InputError(msg)
    order = np.random.default_rng(seed).permutation(n)
    return Splits(
        train=data.select(np.sort(order[n_val + n_cal :])),
        validation=data.select(np.sort(order[:n_val])),
        calibration=data.select(np.sort(order[n_val : n_val + n_cal])),
    )
