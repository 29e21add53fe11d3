"""Every loader on small files the tests write; bad data names the file and what was expected."""

import gzip

import numpy as np
import pytest
from PIL import Image

from detectors import InputError
from detectors.sources import load, load_digits, parse_classes, read_idx


def write_idx(path, array: np.ndarray, *, compress: bool = False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_load_with_their_labels_found_by_name(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(5), compress=compress)
    data = load(f"idx:{tmp_path}/train-images-idx3-ubyte{suffix}")
    assert data.images.shape == (5, 1, 4, 3)
    np.testing.assert_array_equal(data.images[:, 0], images)
    np.testing.assert_array_equal(data.labels, np.arange(5))


def test_idx_without_a_labels_file_has_no_labels(tmp_path):
    write_idx(tmp_path / "x-images.idx", np.zeros((2, 3, 3)))
    assert load(f"idx:{tmp_path}/x-images.idx").labels is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x00\x08", "not an IDX file"),
        (b"\x12\x34\x08\x03" + b"\x00" * 12, "bad magic"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "not supported"),
        (
            bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + b"\x00" * 7,
            "truncated or oversized IDX file: shape \\(4, 2, 2\\) needs 16 bytes",
        ),
        (bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big"), "truncated IDX header"),
    ],
)
def test_bad_idx_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_truncated_gzip_is_refused(tmp_path):
    path = tmp_path / "t-images.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(InputError, match="corrupt or truncated gzip"):
        load(f"idx:{path}")


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode or ("L" if array.ndim == 2 else "RGB")).save(path)


def test_folder_of_class_subfolders_gives_labels(tmp_path):
    rng = np.random.default_rng(0)
    for label in (0, 3):
        for i in range(2):
            _png(tmp_path / str(label) / f"{i}.png", rng.integers(0, 256, (6, 5), dtype=np.uint8))
    data = load(f"folder:{tmp_path}")
    assert data.images.shape == (4, 1, 6, 5)
    assert sorted(data.labels.tolist()) == [0, 0, 3, 3]
    assert data.names[0].endswith(".png")


def test_folder_with_an_rgb_image_loads_as_rgb(tmp_path):
    _png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _png(tmp_path / "b.bmp", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "c.jpg", np.full((4, 4, 3), 200, np.uint8))
    data = load(f"folder:{tmp_path}")
    assert data.images.shape == (3, 3, 4, 4)
    assert data.labels is None


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no images found"),
        (lambda d: (d / "bad.png").write_bytes(b"not a png"), "bad.png: not a readable image"),
        (
            lambda d: (
                _png(d / "a.png", np.zeros((4, 4), np.uint8)),
                _png(d / "b.png", np.zeros((5, 4), np.uint8)),
            ),
            "b.png: size 4x5 differs from 4x4",
        ),
    ],
)
def test_bad_folders_are_refused_naming_the_file(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(InputError, match=message):
        load(f"folder:{tmp_path}")


def test_truncated_png_in_a_folder_is_refused(tmp_path):
    _png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "full.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="full.png"):
        load(f"folder:{tmp_path}")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((3, 5, 6), (3, 1, 5, 6)),
        ((3, 1, 5, 6), (3, 1, 5, 6)),
        ((3, 5, 6, 3), (3, 3, 5, 6)),
        ((3, 3, 5, 6), (3, 3, 5, 6)),
    ],
)
def test_npy_layouts(tmp_path, shape, expected):
    np.save(tmp_path / "x.npy", np.zeros(shape, dtype=np.uint8))
    np.save(tmp_path / "x_labels.npy", np.arange(3))
    data = load(f"npy:{tmp_path}/x.npy")
    assert data.images.shape == expected
    np.testing.assert_array_equal(data.labels, np.arange(3))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 5)), "expected images"),
        (np.full((2, 4, 4), np.nan), "NaN"),
        (np.full((2, 4, 4), 300.0), "within 0..255"),
        (np.full((2, 4, 4), 0.5), "whole numbers"),
    ],
)
def test_bad_npy_arrays_are_refused(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InputError, match=message):
        load(f"npy:{tmp_path}/bad.npy")


def test_digits_are_rescaled_and_split_the_same_way_every_time():
    train, test = load_digits("train"), load_digits("test")
    assert train.images.dtype == np.uint8
    assert train.images.max() == 255
    assert len(train) + len(test) == 1797
    assert train.fingerprint() == load_digits("train").fingerprint()
    train_rows = {row.tobytes() for row in train.images}
    overlap = sum(row.tobytes() in train_rows for row in test.images)
    assert (
        overlap < 5
    )  # the same split every time; the few repeats are duplicate digits in the data


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mnist", "unknown data spec"),
        ("idx:", "needs a path"),
        ("digits:val", "train or test"),
        ("npy:/no/such.npy", "not a readable"),
    ],
)
def test_bad_specs_say_what_is_accepted(spec, message):
    with pytest.raises(InputError, match=message):
        load(spec)


def test_class_selection():
    assert parse_classes("3, 1,1") == [1, 3]
    with pytest.raises(InputError, match="comma-separated integers"):
        parse_classes("a,b")
    data = load_digits("test").with_classes([7])
    assert set(data.labels.tolist()) == {7}
    with pytest.raises(InputError, match="no images of classes"):
        load_digits("test").with_classes([42])
