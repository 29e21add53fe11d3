"""`normalcy report`: an HTML page whose figures all exist as PNGs, built from a bundle and/or the
checkpoint beside it, saying what it left out; `normalcy train` writes one unless told not to."""

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from detectors.bundle import Bundle
from detectors.sources import load_digits
from detectors.spec import BundleSpec
from normalcy.cli import main
from training.report import make_report, report_from_specs, validation_facts

OLD_METADATA = Path(__file__).parents[1] / "detectors" / "data" / "main_metadata.json"


def figures_on(page):
    """The PNG files the page shows, each checked to be a readable PNG."""
    names = re.findall(r"<img src='([^']+)'", page.read_text())
    for name in names:
        with Image.open(page.parent / name) as image:
            assert image.format == "PNG"
            assert image.size[0] > 100
    return names


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("pixelcnn", {"history.png", "samples.png", "scores.png", "roc.png", "calibration.png"}),
        (
            "vae",
            {
                "history.png",
                "samples.png",
                "reconstructions.png",
                "interpolation.png",
                "scores.png",
                "roc.png",
                "calibration.png",
            },
        ),
    ],
)
def test_report_on_a_bundle_shows_every_figure(kind, expected, request, tmp_path):
    bundle = request.getfixturevalue(f"{kind}_bundle")
    report = report_from_specs(bundle, "digits:test", tmp_path, progress=False)
    assert set(figures_on(report.page)) == expected
    assert report.omitted == []
    summary = json.loads((tmp_path / "report.json").read_text())
    # digits:test split by the bundle's own normal classes (0-4): the rest are the anomalies
    assert summary["metrics"]["n_normal"] == int((load_digits("test").labels < 5).sum())
    assert set(summary["metrics"]["auroc"]) == set(summary["metrics"]["fpr_at_alpha"])
    assert all(0 <= v <= 1 for v in summary["metrics"]["fpr_at_alpha"].values())


def test_report_from_a_checkpoint_finds_its_bundle(pixelcnn_bundle, tmp_path):
    report = report_from_specs(
        pixelcnn_bundle.with_suffix(".pt"), "digits:test", tmp_path, progress=False
    )
    assert "roc.png" in figures_on(report.page)


def test_report_says_what_it_left_out(pixelcnn_bundle, tmp_path):
    alone = tmp_path / "alone.onnx"
    shutil.copy(pixelcnn_bundle, alone)  # no checkpoint beside it
    normal = load_digits("test").with_classes([0, 1, 2, 3, 4])
    report = make_report(alone, normal, tmp_path / "out", progress=False)
    names = figures_on(report.page)
    assert "samples.png" not in names
    assert "history.png" in names  # the bundle's metadata carries the history
    assert any("no checkpoint" in text for text in report.omitted)
    assert any("no anomalous" in text for text in report.omitted)
    assert "Left out" in report.page.read_text()

    checkpoint_only = tmp_path / "ckpt.pt"
    shutil.copy(pixelcnn_bundle.with_suffix(".pt"), checkpoint_only)
    report = make_report(checkpoint_only, normal, tmp_path / "out2", progress=False)
    assert "samples.png" in figures_on(report.page)
    assert any("no bundle" in text for text in report.omitted)


def test_conditional_report_samples_each_class_and_scores_wrong_labels(
    conditional_vae_bundle, tmp_path
):
    report = report_from_specs(conditional_vae_bundle, "digits:test", tmp_path, progress=False)
    assert "samples.png" in figures_on(report.page)
    assert "wrong label" in report.metrics["anomalous"]
    assert report.metrics["auroc"]["neg_elbo"] > 0.6


def test_report_command_prints_the_page_and_refuses_a_missing_source(
    pixelcnn_bundle, tmp_path, capsys
):
    assert (
        main(
            [
                "report",
                str(pixelcnn_bundle),
                "--data",
                "digits:test",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--samples",
                "16",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["page"] == str(tmp_path / "index.html")
    assert (
        main(
            [
                "report",
                str(tmp_path / "nothing.onnx"),
                "--data",
                "digits:test",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_train_writes_a_report_beside_the_bundle_unless_told_not_to(tmp_path, capsys):
    common = [
        "train",
        "pixelcnn",
        "--data",
        "digits:train",
        "--normal-classes",
        "0,1",
        "--epochs",
        "1",
        "--hidden",
        "4",
        "--layers",
        "1",
        "--kernel",
        "3",
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "a.onnx")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"] == str(tmp_path / "a-report" / "index.html")
    assert "roc.png" in figures_on(tmp_path / "a-report" / "index.html")
    assert main([*common, "--out", str(tmp_path / "b.onnx"), "--no-report"]) == 0
    assert "report" not in json.loads(capsys.readouterr().out)
    assert not (tmp_path / "b-report").exists()


def test_each_validation_figure_is_named_for_what_it_is(vae_bundle, pixelcnn_bundle):
    vae = dict(validation_facts(Bundle.read(vae_bundle).spec))
    assert list(vae) == ["val_neg_elbo_bits_per_dim", "val_iwae_bits_per_dim"]
    assert "one sample; training's best epoch" in vae["val_neg_elbo_bits_per_dim"]
    assert "K = 4; through the bundle's graph" in vae["val_iwae_bits_per_dim"]
    assert vae["val_neg_elbo_bits_per_dim"][:6] != vae["val_iwae_bits_per_dim"][:6]
    # The PixelCNN trains on the exact NLL, and its bundle's likelihood is that NLL: one figure.
    assert list(dict(validation_facts(Bundle.read(pixelcnn_bundle).spec))) == [
        "val_nll_bits_per_dim"
    ]
    # Bundles written before the figures were named say the same.
    old = BundleSpec.from_json(json.loads(OLD_METADATA.read_text())["vae"], "old")
    assert list(dict(validation_facts(old))) == [
        "val_neg_elbo_bits_per_dim",
        "val_iwae_bits_per_dim",
    ]
