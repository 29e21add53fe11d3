"""One set of readers: every source reads alike through every loader, and the folder-label rule (an
image's label is the integer name of its own folder) is the same for calibrate, evaluate and score.

The loaders: `detectors.sources.load` reads a whole data set (training, calibrate, evaluate,
report); `jobs.inputs` streams the same files in chunks (score)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors import Bundle, Detector, InputError
from detectors.images import InputSpec
from detectors.sources import load
from jobs.inputs import InputSet, load_chunk
from jobs.results import read_results
from normalcy.cli import main
from tests.references import expected_reference

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (4, 1, 5, 6), dtype=np.uint8)


def _pngs(root: Path, folders: list[str]) -> None:
    for i, folder in enumerate(folders):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(GREY[i, 0]).save(root / folder / f"{i}.png")


def _idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def folder_with_class_subfolders(root):
    _pngs(root / "data", ["0", "3", "3", "7"])
    return "folder:data", GREY, [0, 3, 3, 7]


def folder_named_by_its_class(root):  # the case calibrate and score once labelled differently
    _pngs(root / "data", ["3", "3"])
    return "folder:data/3", GREY[:2], [3, 3]


def class_folders_deeper_down(root):
    _pngs(root / "data", ["train/1", "train/1", "test/2"])
    return "folder:data", GREY[[2, 0, 1]], [2, 1, 1]  # walked in name order: test/ first


def folder_without_labels(root):
    _pngs(root / "data", ["a", "b"])
    return "folder:data", GREY[:2], None


def folder_partly_labelled(root):
    _pngs(root / "data", ["2", "loose"])
    return "folder:data", GREY[:2], None  # a data set has labels when every image has one


def npy_with_labels(root):
    np.save(root / "x.npy", GREY[:, 0])
    np.save(root / "x_labels.npy", np.array([4, 1, 1, 0]))
    return "npy:x.npy", GREY, [4, 1, 1, 0]


def npy_channels_last_whole_floats(root):
    np.save(root / "x.npy", np.moveaxis(GREY, 1, -1).astype(np.float32))
    return "npy:x.npy", GREY, None


def npy_out_of_range(root):
    np.save(root / "x.npy", np.full((2, 5, 6), 300.0))
    return "npy:x.npy", InputError("within 0..255"), None


def npy_of_strings(root):
    np.save(root / "x.npy", np.full((2, 5, 6), "a"))
    return "npy:x.npy", InputError("images must be numeric"), None


def idx_gzipped_with_labels(root):
    _idx(root / "t-images-idx3-ubyte.gz", GREY[:, 0], compress=True)
    _idx(root / "t-labels-idx1-ubyte.gz", np.array([2, 2, 0, 1]), compress=True)
    return "idx:t-images-idx3-ubyte.gz", GREY, [2, 2, 0, 1]


def idx_without_labels(root):
    _idx(root / "u-images-idx3-ubyte", GREY[:, 0], compress=False)
    return "idx:u-images-idx3-ubyte", GREY, None


def idx_truncated(root):
    _idx(root / "v-images-idx3-ubyte", GREY[:, 0], compress=False)
    path = root / "v-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    return "idx:v-images-idx3-ubyte", InputError("needs 120 bytes of data, found 117"), None


def idx_labels_of_another_length(root):
    _idx(root / "w-images-idx3-ubyte", GREY[:, 0], compress=False)
    _idx(root / "w-labels-idx1-ubyte", np.arange(3), compress=False)
    return "idx:w-images-idx3-ubyte", GREY, InputError("labels for 4 images")


CASES = [
    folder_with_class_subfolders,
    folder_named_by_its_class,
    class_folders_deeper_down,
    folder_without_labels,
    folder_partly_labelled,
    npy_with_labels,
    npy_channels_last_whole_floats,
    npy_out_of_range,
    npy_of_strings,
    idx_gzipped_with_labels,
    idx_without_labels,
    idx_truncated,
    idx_labels_of_another_length,
]


def whole(spec: str) -> tuple[np.ndarray, list | None]:
    data = load(spec)
    return data.images, None if data.labels is None else data.labels.tolist()


def stream(spec: str, work: Path) -> tuple[np.ndarray, list | str]:
    """The batch job's reading of one input: its images (InputError with the first row's error when
    a row cannot be read), and its labels as a conditional bundle asks for them, or the first
    row's reason why it has none."""
    inputs = InputSet([spec], InputSpec(1, 5, 6), work)

    def columns(labelled: bool) -> dict[str, np.ndarray]:
        chunks = inputs.chunks(inputs.items(), 3)  # several chunks per input
        parts = [load_chunk(chunk, inputs.spec, labelled=labelled) for chunk in chunks]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    plain = columns(labelled=False)
    failed = [error for error in plain["error"] if error]
    if failed:
        raise InputError(failed[0])
    labelled = columns(labelled=True)
    unlabelled = [error for error in labelled["error"] if error]
    return plain["image"], unlabelled[0] if unlabelled else labelled["label"].tolist()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_every_loader_reads_a_source_alike(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, images, labels = case(tmp_path)
    if isinstance(images, InputError):
        for read in (lambda: whole(spec), lambda: stream(spec, tmp_path)):
            with pytest.raises(InputError, match=str(images)):
                read()
        return
    streamed_images, streamed_labels = stream(spec, tmp_path)
    np.testing.assert_array_equal(streamed_images, images)
    if isinstance(labels, InputError):  # a whole data set fails; a job fails those rows
        with pytest.raises(InputError, match=str(labels)):
            whole(spec)
        assert str(labels) in streamed_labels
        return
    whole_images, whole_labels = whole(spec)
    np.testing.assert_array_equal(whole_images, images)
    assert whole_labels == labels
    if labels is None:
        assert "class-conditional" in streamed_labels  # each unlabelled row says why
    else:
        assert streamed_labels == labels


def test_calibrate_evaluate_and_score_label_a_folder_alike(
    conditional_pixelcnn_bundle, digits_test, tmp_path, capsys
):
    """`a/3/x.png` is a 3 for every command, whichever folder the command is given."""
    threes = digits_test.images[digits_test.labels == 3][:12]
    folder = tmp_path / "a" / "3"
    folder.mkdir(parents=True)
    for i, image in enumerate(threes):
        Image.fromarray(image[0]).save(folder / f"{i:02d}.png")
    detector = Detector.load(conditional_pixelcnn_bundle, device="cpu")
    as_three = detector.raw_scores(threes, ["nll"], labels=[3] * 12)["nll"]
    as_one = detector.raw_scores(threes, ["nll"], labels=[1] * 12)["nll"]
    assert np.all(np.abs(as_three - as_one) > 1e-6)  # the label changes every score

    argv = [str(conditional_pixelcnn_bundle), str(folder), "--out", str(tmp_path / "r.csv")]
    assert main(["score", *argv, "--score", "nll", "--no-progress"]) == 0
    np.testing.assert_allclose([row["score"] for row in read_results(tmp_path / "r.csv")], as_three)

    capsys.readouterr()
    assert main(["evaluate", str(conditional_pixelcnn_bundle), "--normal", f"folder:{folder}",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["normal_bits_per_dim"] == pytest.approx(float(np.mean(as_three)), rel=1e-6)

    out = tmp_path / "calibrated.onnx"
    data = f"folder:{tmp_path / 'a'}"  # the parent folder: the same labels
    assert main(["calibrate", str(conditional_pixelcnn_bundle), "--data", data,
                 "--out", str(out)]) == 0  # fmt: skip
    expected = expected_reference(detector.spec, {"nll": as_three}, "nll")
    np.testing.assert_allclose(Bundle.read(out).reference("nll"), expected, rtol=1e-6)
