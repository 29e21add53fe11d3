"""Shared fixtures: tiny bundles trained once per session on the bundled digits (seconds each)."""

from __future__ import annotations

import pytest

DIGITS_NORMAL = [0, 1, 2, 3, 4]
# Of the ~680 training digits 0-4: two halves of at least 99 images each, so that the combined
# score's threshold at alpha 0.01 is finite (detectors/combination.py).
CALIBRATION = 0.35


def _train(kind: str, out, train=None, **extra):
    from training.pipeline import TrainJob, run
    from training.train import TrainConfig

    model = {
        "pixelcnn": {"hidden": 16, "layers": 3, "kernel": 3, "head": 32},
        "vae": {"latent": 4, "hidden": 8},
    }[kind]
    job = TrainJob(
        kind,
        "digits:train",
        str(out),
        normal_classes=DIGITS_NORMAL,
        model=model,
        train=train or TrainConfig(epochs=2, seed=0),
        progress=False,
        calibration=CALIBRATION,
        **extra,
    )
    bundle, _ = run(job)
    return bundle


@pytest.fixture(scope="session")
def pixelcnn_bundle(tmp_path_factory):
    """Path of a tiny calibrated PixelCNN bundle (digits 0-4 normal), with its local model."""
    out = tmp_path_factory.mktemp("bundles") / "pixelcnn.onnx"
    _train("pixelcnn", out)
    return out


@pytest.fixture(scope="session")
def vae_bundle(tmp_path_factory):
    """Path of a tiny calibrated VAE bundle (digits 0-4 normal)."""
    out = tmp_path_factory.mktemp("bundles") / "vae.onnx"
    _train("vae", out)
    return out


@pytest.fixture(scope="session")
def digits_test():
    from detectors.sources import load_digits

    return load_digits("test")


def _train_conditional(kind: str, out):
    """A class-conditional bundle on digits 0-4: trained long enough that the label matters."""
    from training.train import TrainConfig

    train = TrainConfig(
        epochs=10, batch_size=16, lr=3e-3, warmup_steps=10, patience=10, seed=0, conditional=True
    )
    return _train(kind, out, train=train)


@pytest.fixture(scope="session")
def conditional_pixelcnn_bundle(tmp_path_factory):
    """Path of a tiny class-conditional PixelCNN bundle (digits 0-4, label = digit)."""
    out = tmp_path_factory.mktemp("bundles") / "conditional_pixelcnn.onnx"
    _train_conditional("pixelcnn", out)
    return out


@pytest.fixture(scope="session")
def conditional_vae_bundle(tmp_path_factory):
    """Path of a tiny conditional VAE bundle (digits 0-4, label = digit)."""
    out = tmp_path_factory.mktemp("bundles") / "conditional_vae.onnx"
    _train_conditional("vae", out)
    return out
