"""The `normalcy` command end to end on the bundled digits, as a user runs it."""

import json
import subprocess
import sys

import pytest

from normalcy.cli import main


def normalcy(*args):
    return subprocess.run(
        [sys.executable, "-m", "normalcy.cli", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits.onnx"
    run = normalcy(
        "train",
        "pixelcnn",
        "--data",
        "digits:train",
        "--normal-classes",
        "0,1,2",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--layers",
        "2",
        "--kernel",
        "3",
        "--no-progress",
    )
    assert run.returncode == 0, run.stderr
    return out, json.loads(run.stdout)


def test_train_writes_a_bundle_and_its_checkpoint(trained):
    out, summary = trained
    assert out.exists()
    assert out.with_suffix(".pt").exists()
    assert summary["epochs"] == 1
    # The PixelCNN's objective and its bundle's likelihood are both the exact NLL: one figure.
    assert summary["val_nll_bits_per_dim"] > 0
    assert not [k for k in summary if "bits_per_dim" in k and k != "val_nll_bits_per_dim"]
    # --max-minutes bounds the training loop; the rest of the run is timed apart.
    parts = ("train_seconds", "validation_seconds", "calibration_seconds")
    assert sum(summary[k] for k in parts) <= summary["total_seconds"] + 0.15  # rounded to 0.1 s
    # Digits 0-2 leave about 70 calibration images: at the default alpha 0.01 the combined
    # default (one member, so referenced on all of them) can never flag, and the summary says so
    # (stderr repeats it).
    [warning] = summary["warnings"]
    assert "flags nothing at alpha 0.01" in warning
    assert "at least 99 held-out normal images" in warning
    assert "half" not in warning


def test_info_prints_the_metadata_as_json(trained, capsys):
    out, _ = trained
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    meta = info["metadata"]
    assert meta["model"]["kind"] == "pixelcnn"
    assert meta["training"]["normal_classes"] == [0, 1, 2]
    assert meta["training"]["data_fingerprint"]
    assert meta["training"]["package_version"]
    # The PixelCNN's combined score has one member, so no score's reference is half the
    # calibration images: each holds all of them.
    sizes = {name: score["reference_size"] for name, score in meta["scores"].items()}
    assert set(sizes.values()) == {meta["calibration"]["n_reference"]}
    assert meta["calibration"]["n_reference"] > 0


def test_evaluate_with_labelled_data(trained, capsys):
    out, _ = trained
    assert (
        main(["evaluate", str(out), "--data", "digits:test", "--normal-classes", "0,1,2", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["n_normal"] > 0
    assert report["n_anomalous"] > 0
    assert {row["score"] for row in report["rows"]} >= {"nll", "nll_minus_zlib"}
    assert all(0 <= row["auroc"] <= 1 for row in report["rows"])


def test_evaluate_with_separate_normal_and_anomalous_sets_prints_a_table(trained, capsys):
    out, _ = trained
    assert (
        main(["evaluate", str(out), "--normal", "digits:test", "--anomalous", "digits:train"]) == 0
    )
    table = capsys.readouterr().out
    assert "auroc" in table
    assert "fpr_at_alpha" in table
    assert "normal bits/dim" in table


def test_bad_input_exits_with_a_message_not_a_traceback(trained, tmp_path):
    out, _ = trained
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    run = normalcy("info", str(junk))
    assert run.returncode == 2
    assert "error" in run.stderr
    assert "Traceback" not in run.stderr
    run = normalcy("train", "vae", "--data", "nope:x", "--out", str(tmp_path / "x.onnx"))
    assert run.returncode == 2
    assert "unknown data spec" in run.stderr


def test_demo_runs_end_to_end_quickly(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "pixelcnn" in table
    assert "vae" in table
    assert "AUROC" in table
    assert (tmp_path / "pixelcnn.onnx").exists()
    assert (tmp_path / "vae.onnx").exists()
