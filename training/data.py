"""Training data: a spec string -> normal images -> deterministic train / validation / calibration.

The loaders themselves live in `detectors.sources` (scoring jobs need them without torch); this
module adds what only training needs: class selection, seeded splits, and perturbation for
background models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detectors.errors import InputError
from detectors.sources import ImageSet, load, parse_classes

__all__ = ["ImageSet", "Splits", "load", "parse_classes", "perturb", "split"]


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


def perturb(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each sub-pixel with a uniform random level with probability `rate` (uint8 in, out).

    The background model of the likelihood ratio (Ren et al., 2019) is fitted to such images, so it
    learns the population-level statistics but not the semantics of the normal class.
    """
    replace = torch.rand(x.shape, generator=generator, device=x.device) < rate
    noise = torch.randint(0, 256, x.shape, generator=generator, device=x.device, dtype=torch.uint8)
    return torch.where(replace, noise, x)
