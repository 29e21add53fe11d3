"""Class labels for conditional bundles, which score "is this a normal example of class y".

A conditional bundle's metadata carries `labels` (spec.LabelSpec: the graph input's name,
num_classes K, and the classes seen in training). Its graph takes one int64 label per image; labels
outside `classes` would index untrained (or missing) embeddings, so they are refused.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .spec import LabelSpec


def check_labels(labels, n_images: int, spec: LabelSpec | None) -> np.ndarray | None:
    """Validate labels for `n_images` images against a bundle's label spec; int64 (B,) or None.

    An unconditional bundle (spec None) takes no labels; a conditional one needs one whole number
    per image, each among the classes it was trained on.
    """
    if spec is None:
        if labels is not None:
            msg = "this model is not conditional: it takes no labels"
            raise InputError(msg)
        return None
    classes = list(spec.classes)
    if labels is None:
        msg = f"this model is class-conditional: give one label per image, one of {classes}"
        raise InputError(msg)
    array = np.asarray(labels)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        msg = f"labels must be whole numbers, got dtype {array.dtype}"
        raise InputError(msg)
    if array.ndim != 1 or len(array) != n_images:
        msg = f"need one label per image: {n_images} image(s), labels of shape {array.shape}"
        raise InputError(msg)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            msg = "labels must be whole numbers"
            raise InputError(msg)
    array = array.astype(np.int64)
    unknown = sorted(set(array.tolist()) - set(classes))
    if unknown:
        msg = f"label(s) {unknown} out of range: this model knows classes {classes}"
        raise InputError(msg)
    return array
