"""benchmarks/quality.py --merge: runs that split a protocol join only where they tested the same
images (the anomalies are drawn in the order of --classes, so two class lists can differ)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import quality


def _run(kind: str, images: str | None, command: str = "python benchmarks/quality.py") -> dict:
    record = {
        "protocol": "oneclass",
        "dataset": "mnist",
        "normal_class": 8,
        "peers": {"pyod_knn": {"auroc": 0.89}},
        kind: {"default": "combined", "scores": {"combined": {"auroc": 0.95}}},
    }
    if images:
        record["test_images"] = images
    return {
        "records": [record],
        "budgets_epochs": {"vae": 16, "pixelcnn": 2},
        "models": quality.MODELS,
        "wall_seconds": 10.0,
        "machine": {"load_average": [1.0, 1.0, 1.0], "workers": 2, "threads_per_worker": 1},
        "command": command,
    }


def test_merge_joins_the_kinds_of_a_unit_tested_on_the_same_images():
    merged = quality.merge([_run("vae", "ab12"), _run("pixelcnn", "ab12")])
    (record,) = merged["records"]
    assert {"vae", "pixelcnn"} <= set(record)
    assert record["test_images"] == "ab12"
    assert merged["wall_seconds"] == 20.0


def test_merge_refuses_a_unit_tested_on_other_images():
    with pytest.raises(SystemExit, match="tested on different images"):
        quality.merge([_run("vae", "ab12"), _run("pixelcnn", "cd34")])


def test_merge_of_runs_without_fingerprints_still_works():
    # results written before the fingerprint: nothing to compare, as before
    merged = quality.merge([_run("vae", None), _run("pixelcnn", "ab12")])
    assert merged["records"][0]["test_images"] == "ab12"


def test_fingerprint_follows_the_images():
    normal = np.zeros((3, 28, 28), np.uint8)
    anomalous = np.ones((2, 28, 28), np.uint8)
    unit = {"normal": normal, "anomalous": anomalous}
    assert quality.test_images(unit) == quality.test_images(
        {"normal": normal.copy(), "anomalous": anomalous.copy()}
    )
    other = anomalous.copy()
    other[1, 0, 0] = 2
    assert quality.test_images(unit) != quality.test_images({"normal": normal, "anomalous": other})
    # the normal and anomalous parts are not interchangeable
    assert quality.test_images(unit) != quality.test_images(
        {"normal": anomalous, "anomalous": normal}
    )


def test_a_unit_draws_the_same_anomalies_whatever_classes_a_run_takes(tmp_path):
    if not (quality.DATASETS / "mnist").is_dir():
        pytest.skip(f"no MNIST at {quality.DATASETS}")
    quick = {
        (u["dataset"], u["normal_class"]): quality.test_images(u)
        for u in quality.units((0, 2, 8), pair=False)
    }
    split = {
        (u["dataset"], u["normal_class"]): quality.test_images(u)
        for u in quality.units((8, 0), pair=False)
    }
    assert split == {key: quick[key] for key in split}  # so runs of other classes merge
    assert len(set(quick.values())) == len(quick)  # every unit tests its own images
    pair = quality.units((), pair=True)
    assert [u["protocol"] for u in pair] == ["pair"]
    assert quality.test_images(pair[0]) == quality.test_images(quality.units((3,), pair=True)[-1])
