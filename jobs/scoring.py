"""The one scoring function of both engines (local and Ray): decoded columns in, scored rows out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detectors.detector import Detector
from detectors.errors import InputError

# What an engine hands each scored batch to (the job's journal and progress bar).
OnBatch = Callable[[dict[str, np.ndarray]], None]


def score_batch(
    detector: Detector,
    batch: dict[str, np.ndarray],
    score: str | None = None,
    *,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """{input, index, image, error[, label]} -> {input, index, score, p_value, error}. Rows with an
    error are not scored; their score and p_value are NaN. A conditional bundle's batches carry
    each image's class in "label".

    With `pad_to`, smaller batches are padded with blank images (scored, then dropped): ONNX
    Runtime then sees one batch shape, and its memory arena does not grow for each odd size."""
    errors = np.array([str(e) for e in batch["error"]], dtype=object)
    images = np.asarray(batch["image"])
    labels = np.asarray(batch["label"]) if "label" in batch else None
    ok = errors == ""
    n_ok = int(ok.sum())
    scores = np.full(len(errors), np.nan)
    p_values = np.full(len(errors), np.nan)
    if n_ok:
        valid = images[ok]
        valid_labels = None if labels is None else labels[ok]
        if pad_to and n_ok < pad_to:
            valid = np.concatenate([valid, np.zeros((pad_to - n_ok, *valid.shape[1:]), np.uint8)])
            if valid_labels is not None:  # blanks get a real row's label: they are dropped anyway
                valid_labels = np.concatenate(
                    [valid_labels, np.full(pad_to - n_ok, valid_labels[0])]
                )
        try:
            result = detector.score(valid, labels=valid_labels, score=score)
            scores[ok], p_values[ok] = result.scores[:n_ok], result.p_values[:n_ok]
        except InputError:
            # One image the model cannot score (a non-finite output, a label it does not know)
            # must not cost the batch.
            for i in np.flatnonzero(ok):
                try:
                    one_label = None if labels is None else labels[i : i + 1]
                    result = detector.score(images[i : i + 1], labels=one_label, score=score)
                    scores[i], p_values[i] = result.scores[0], result.p_values[0]
                except InputError as error:
                    errors[i] = f"{batch['input'][i]}: {error}"
    return {
        "input": np.asarray(batch["input"], dtype=object),
        "index": np.asarray(batch["index"]),
        "score": scores,
        "p_value": p_values,
        "error": errors,
    }
