"""One score from several: a combined statistic, conformalised again on normal images that its
members' references do not hold. Arrays only: no images, no ONNX.

No single statistic wins everywhere: reconstruction error and latent density catch a digit of the
wrong class, a complexity-corrected likelihood catches another data set, the pattern of surprise
over the image catches what the total likelihood averages away. The combined score turns each
member statistic s_i into its conformal p-value p_i against a reference and combines them with
Fisher's method:

    T = -2 sum_i log p_i

The members' references inside the combination come from one set of held-out normal images (the
validation split, when training; the first half of the images `normalcy calibrate` is given,
when it is given one set); the combined score's reference is T on *other* held-out normal images
(every calibration image; the second half). T is a fixed function once the members' references
are spent, so its values on the combined reference are exchangeable with those of new normal
images, and the combined p-value keeps P(p <= alpha) <= alpha whatever the dependence between the
members. The members' own p-values, by name, use every calibration image. The validation split
also chose the training epoch; that does not matter here, since T need only be fixed, not fitted
on images like the new ones.

With one member nothing is split. T = -2 log p_1 falls as the member's count #{ref >= s} rises,
and with both references on the same n images (a reference image's count includes itself), the
number of reference images whose T is at least T(x) is exactly #{ref >= s(x)}: the combined
p-value of a new image is the member's own conformal p-value against all n, ties included
(fitting.with_reference; tests/detectors/test_combination.py).

Fisher was kept after measuring it beside other rules on development splits (one-class MNIST,
classes 2, 5, 8 and 9 normal, other classes' *training* images as anomalies; a VAE's latent
density, reconstruction-map distance and reconstruction error as members): mean AUROC 94.4 for
Fisher, 93.7 for the minimum p-value, 93.8 for the sum of normal quantiles, 90.8 for a Gaussian
density of the raw statistics fitted on normal images (DoSE, Morningstar et al. 2021) and 84.9
for that density on normal quantiles. On Fashion-MNIST vs MNIST the Gaussian density was ahead by
0.1-1 point with some member sets and Fisher with others; Fisher was never far from the best and
needs nothing fitted beyond the members' references.
"""

from __future__ import annotations

import numpy as np

from .calibration import conformal_p_values
from .errors import InputError

RULES = ("fisher",)


def fisher(p_values: list[np.ndarray]) -> np.ndarray:
    """-2 sum log p over the members, (B,); higher = more anomalous."""
    return -2.0 * np.sum([np.log(p) for p in p_values], axis=0)


def combine(rule: str, members: dict[str, np.ndarray], references: dict[str, np.ndarray]):
    """The combined statistic (B,) from each member's raw scores (B,) and sorted reference."""
    if rule not in RULES:
        msg = f"combination rule {rule!r} is not one of {RULES}"
        raise InputError(msg)
    empty = [name for name, ref in references.items() if np.asarray(ref).size == 0]
    if empty:
        msg = f"the combined score needs calibrated members; {empty} have no reference"
        raise InputError(msg)
    return fisher([conformal_p_values(members[name], references[name]) for name in members])


def calibration_halves(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the two halves of n held-out normal images, when no other images are given for
    the members: the first (the larger, when n is odd) for the members' references inside the
    combination, the second for the combined score's. A fixed permutation,
    so a calibration is reproducible and independent of the images' order on disk."""
    order = np.random.default_rng(seed).permutation(n)
    first = n - n // 2
    return np.sort(order[:first]), np.sort(order[first:])
