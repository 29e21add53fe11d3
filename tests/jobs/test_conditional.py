"""`normalcy score` with a class-conditional bundle: each image is scored with its own label (the
folder it sits in, or the labels file beside an array), and an image without a usable label is an
error row, not a stopped job."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from detectors import Detector

from .cli import score


@pytest.fixture(scope="module")
def normal_digits(digits_test):
    return digits_test.with_classes([0, 1, 2, 3, 4])


def score_by_item(bundle, inputs, out) -> dict:
    rows = score(bundle, inputs, out, "--workers", "0", "--batch-size", "16")
    return {
        (row["input"], -1 if row["index"] in ("", None) else int(row["index"])): row for row in rows
    }


def test_array_and_folder_inputs_are_scored_with_their_labels(
    conditional_pixelcnn_bundle, normal_digits, tmp_path
):
    images, labels = normal_digits.images[:40], normal_digits.labels[:40]
    np.save(tmp_path / "arr.npy", images[:20])
    np.save(tmp_path / "arr_labels.npy", labels[:20])
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (10, 8, 8))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(header + images[20:30, 0].tobytes())
    )
    idx_labels = (
        bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + labels[20:30].astype(np.uint8).tobytes()
    )
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels))
    files = []
    for i in range(30, 40):
        folder = tmp_path / "pngs" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0]).save(folder / f"{i}.png")
        files.append((str(folder / f"{i}.png"), -1, i))
    rows = score_by_item(
        conditional_pixelcnn_bundle,
        [tmp_path / "arr.npy", tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "pngs"],
        tmp_path / "out.csv",
    )
    assert len(rows) == 40
    expected = Detector.load(conditional_pixelcnn_bundle, device="cpu").score(images, labels=labels)
    where = [(str(tmp_path / "arr.npy"), i, i) for i in range(20)]
    where += [(str(tmp_path / "t10k-images-idx3-ubyte.gz"), i, 20 + i) for i in range(10)]
    for path, index, i in where + files:
        row = rows[(path, index)]
        assert row["error"] in ("", None)
        assert float(row["score"]) == pytest.approx(expected.scores[i], abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(expected.p_values[i])


def test_images_without_a_usable_label_are_error_rows(
    conditional_pixelcnn_bundle, normal_digits, tmp_path
):
    images = normal_digits.images[:6]
    np.save(tmp_path / "nolabels.npy", images[:2])  # no nolabels_labels.npy beside it
    (tmp_path / "loose").mkdir()
    Image.fromarray(images[2, 0]).save(tmp_path / "loose" / "a.png")  # folder is not a class
    (tmp_path / "7").mkdir()
    Image.fromarray(images[3, 0]).save(tmp_path / "7" / "b.png")  # a class the model never saw
    (tmp_path / "1").mkdir()
    Image.fromarray(images[4, 0]).save(tmp_path / "1" / "c.png")  # fine
    inputs = [tmp_path / "nolabels.npy", tmp_path / "loose", tmp_path / "7", tmp_path / "1"]
    rows = score_by_item(conditional_pixelcnn_bundle, inputs, tmp_path / "out.jsonl")
    errors = {"/".join(path.split("/")[-2:]): row["error"] for (path, _), row in rows.items()}
    assert "nolabels_labels.npy is not beside it" in errors[f"{tmp_path.name}/nolabels.npy"]
    assert "no label" in errors["loose/a.png"]
    assert "out of range" in errors["7/b.png"]
    assert errors["1/c.png"] is None
