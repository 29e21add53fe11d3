"""Class-conditional models: samples follow the asked class, bundles take the label as a second
input, and calibration scores each held-out image given its own label."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from detectors.bundle import Bundle
from detectors.runtime import OnnxSession
from detectors.sources import load_digits
from normalcy.cli import main
from tests.conftest import CALIBRATION
from tests.references import expected_reference
from training.data import split
from training.train import model_from_checkpoint

CLASSES = [0, 1, 2, 3, 4]
PER_CLASS = 20


@pytest.fixture(scope="module")
def digit_classifier():
    """Logistic regression on real digits 0-4: it names the class of an 8x8 image."""
    train = load_digits("train").with_classes(CLASSES)
    return LogisticRegression(max_iter=2000).fit(
        train.images.reshape(len(train), -1) / 255.0, train.labels
    )


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_samples_of_each_class_are_recognised_as_that_class(kind, digit_classifier, request):
    path = request.getfixturevalue(f"conditional_{kind}_bundle")
    _, model, _ = model_from_checkpoint(path.with_suffix(".pt"))
    asked = torch.tensor(CLASSES).repeat_interleave(PER_CLASS)
    generator = torch.Generator().manual_seed(0)
    if kind == "pixelcnn":
        samples = model.sample(len(asked), 8, 8, label=asked, generator=generator)
    else:
        samples = model.sample(len(asked), label=asked, generator=generator)
    predicted = digit_classifier.predict(samples.numpy().reshape(len(asked), -1) / 255.0)
    accuracy = float(np.mean(predicted == asked.numpy()))
    # Chance is 1/5; an unconditional model's samples would be recognised as the asked class
    # about that often.
    assert accuracy > 0.6, f"{kind}: {accuracy:.2f} of samples recognised as their class"


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_conditional_bundle_says_so_and_takes_labels_as_a_second_input(kind, request):
    path = request.getfixturevalue(f"conditional_{kind}_bundle")
    bundle = Bundle.read(path)
    meta = bundle.spec.to_json()
    assert meta["model"]["conditional"] is True
    assert meta["model"]["num_classes"] == 5
    assert meta["labels"] == {
        "input": "labels",
        "dtype": "int64",
        "num_classes": 5,
        "classes": CLASSES,
    }
    inputs = {i.name: i.type for i in OnnxSession(bundle, device="cpu").session.get_inputs()}
    assert inputs["labels"] == "tensor(int64)"


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_exported_conditional_graph_matches_torch(kind, request):
    path = request.getfixturevalue(f"conditional_{kind}_bundle")
    _, model, _ = model_from_checkpoint(path.with_suffix(".pt"))
    test = load_digits("test").with_classes(CLASSES)
    images, labels = test.images[:9], test.labels[:9]
    session = OnnxSession(Bundle.read(path), device="cpu")
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    if kind == "pixelcnn":
        got = session.run(images, ["nll_bits_per_dim"], labels=labels)["nll_bits_per_dim"]
        with torch.no_grad():
            expected = model.bits_per_dim(x, y).numpy()
    else:
        rng = np.random.default_rng(0)
        noise = rng.standard_normal((9, 3, model.cfg.latent)).astype(np.float32)
        got = session.session.run(
            ["neg_elbo_bits_per_dim"], {"images": images, "noise": noise, "labels": labels}
        )[0]
        with torch.no_grad():
            expected = model.scores(x, torch.from_numpy(noise), y)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_calibration_reference_is_scored_with_the_true_labels(conditional_pixelcnn_bundle):
    bundle = Bundle.read(conditional_pixelcnn_bundle)
    data = load_digits("train").with_classes(CLASSES)
    calibration = split(data, seed=0, validation=0.1, calibration=CALIBRATION).calibration
    session = OnnxSession(bundle, device="cpu")
    nll = session.run(calibration.images, ["nll_bits_per_dim"], labels=calibration.labels)[
        "nll_bits_per_dim"
    ]
    expected = expected_reference(bundle.spec, {"nll": nll}, "nll")
    np.testing.assert_allclose(bundle.reference("nll"), expected, atol=1e-5)
    shifted = session.run(
        calibration.images, ["nll_bits_per_dim"], labels=(calibration.labels + 1) % 5
    )["nll_bits_per_dim"]
    assert np.mean(shifted) > np.mean(nll) + 0.05  # the label matters to the likelihood


def test_train_command_trains_a_conditional_bundle(tmp_path, capsys):
    out = tmp_path / "cond.onnx"
    code = main(
        [
            "train",
            "vae",
            "--data",
            "digits:train",
            "--normal-classes",
            "1,3",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--latent",
            "2",
            "--hidden",
            "4",
            "--conditional",
            "--no-progress",
            "--no-report",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["bundle"] == str(out)
    labels = Bundle.read(out).spec.labels
    assert labels.num_classes == 4  # labels 0..3 index the embedding; only 1 and 3 are known
    assert labels.classes == (1, 3)


def test_conditional_training_needs_labelled_data(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "plain.npy", images)
    from training.pipeline import TrainJob, run
    from training.train import TrainConfig

    job = TrainJob(
        "vae",
        f"npy:{tmp_path / 'plain.npy'}",
        str(tmp_path / "x.onnx"),
        train=TrainConfig(epochs=1, conditional=True),
        progress=False,
    )
    with pytest.raises(ValueError, match="labelled"):
        run(job)


def test_calibrate_command_scores_a_conditional_bundle_with_the_data_labels(
    conditional_vae_bundle, tmp_path, capsys
):
    out = tmp_path / "recalibrated.onnx"
    assert (
        main(
            [
                "calibrate",
                str(conditional_vae_bundle),
                "--data",
                "digits:test",
                "--normal-classes",
                "0,1,2,3,4",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    test = load_digits("test").with_classes(CLASSES)
    scores = OnnxSession(Bundle.read(out), device="cpu").raw_scores(
        test.images, ["neg_elbo"], labels=test.labels
    )[0]["neg_elbo"]
    expected = expected_reference(Bundle.read(out).spec, {"neg_elbo": scores}, "neg_elbo")
    np.testing.assert_allclose(Bundle.read(out).reference("neg_elbo"), expected, atol=1e-5)
