"""The training loop: deterministic splits, resumable checkpoints, early stopping, budgets."""

import numpy as np
import pytest
import torch

from detectors.sources import load_digits
from training.data import split
from training.train import TrainConfig, fit, load_checkpoint

TINY = {"hidden": 8, "layers": 2, "kernel": 3, "head": 8}


@pytest.fixture(scope="module")
def splits():
    return split(load_digits("train").with_classes([0, 1]), seed=3)


def test_splits_are_disjoint_deterministic_and_cover_the_data():
    data = load_digits("train").with_classes([0])
    a, b = split(data, seed=1), split(data, seed=1)
    parts = [a.train, a.validation, a.calibration]
    assert sum(len(p) for p in parts) == len(data)
    np.testing.assert_array_equal(a.calibration.images, b.calibration.images)
    keys = [set(map(bytes, p.images.reshape(len(p), -1))) for p in parts]
    assert not (keys[0] & keys[2]) or len(keys[0] & keys[2]) < 3  # duplicates in the data only
    assert not np.array_equal(split(data, seed=2).calibration.images, a.calibration.images)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resuming_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(splits, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, seed=0, patience=10)
    straight, _ = fit("pixelcnn", TINY, splits, cfg, progress=False)
    ckpt = tmp_path / "m.pt"
    fit(
        "pixelcnn",
        TINY,
        splits,
        TrainConfig(epochs=2, batch_size=32, seed=0, patience=10),
        checkpoint=ckpt,
        progress=False,
    )
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed, result = fit(
        "pixelcnn", TINY, splits, cfg, checkpoint=ckpt, resume=True, progress=False
    )
    assert result.epochs == 3
    assert len(result.history) == 3
    for name, value in _weights(straight).items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


def test_early_stopping_stops_when_validation_stops_improving(splits):
    # A learning rate far too high makes validation worse after the first epoch.
    cfg = TrainConfig(epochs=20, lr=0.5, patience=2, warmup_steps=1, batch_size=64)
    _, result = fit("pixelcnn", TINY, splits, cfg, progress=False)
    assert result.stopped == "early_stopping"
    assert result.epochs < 20
    best = min(h["validation_bits_per_dim"] for h in result.history)
    assert result.best_validation_bits_per_dim == best


def test_a_time_budget_ends_training_after_the_step_that_passes_it(splits):
    _, result = fit(
        "vae",
        {"latent": 2, "hidden": 4, "height": 8, "width": 8},
        splits,
        TrainConfig(epochs=50, max_minutes=0.0),
        progress=False,
    )
    assert result.stopped == "budget"
    assert result.epochs == 1


def test_training_lowers_validation_bits_per_dim(splits):
    _, result = fit("pixelcnn", TINY, splits, TrainConfig(epochs=3, batch_size=32), progress=False)
    history = [h["validation_bits_per_dim"] for h in result.history]
    assert history[-1] < history[0] < 8.5
