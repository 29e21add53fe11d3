"""The training loop: deterministic splits, resumable checkpoints, early stopping, budgets."""

import numpy as np
import pytest
import torch

from detectors.sources import load_digits
from training.data import split
from training.pipeline import TrainJob, run
from training.train import TrainConfig, fit, history_curve, history_objective, load_checkpoint

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
    best = min(h["val_nll_bits_per_dim"] for h in result.history)
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
    history = [h["val_nll_bits_per_dim"] for h in result.history]
    assert history[-1] < history[0] < 8.5


def test_each_epoch_names_its_objective_and_times_training_and_validation_apart(splits):
    vae = {"latent": 2, "hidden": 4, "height": 8, "width": 8}
    _, result = fit("vae", vae, splits, TrainConfig(epochs=2), progress=False)
    assert result.objective == "neg_elbo"  # the VAE trains on the one-sample negative ELBO
    assert [sorted(row) for row in result.history] == 2 * [
        sorted(
            [
                "epoch",
                "train_neg_elbo_bits_per_dim",
                "val_neg_elbo_bits_per_dim",
                "train_seconds",
                "validation_seconds",
            ]
        )
    ]
    assert result.train_seconds == pytest.approx(sum(r["train_seconds"] for r in result.history))
    assert result.validation_seconds == pytest.approx(
        sum(r["validation_seconds"] for r in result.history)
    )
    assert history_objective(result.history) == "neg_elbo"
    assert history_curve(result.history, "val") == [
        r["val_neg_elbo_bits_per_dim"] for r in result.history
    ]


def test_histories_written_before_the_objective_was_named_still_read():
    old = [{"epoch": 1, "train_bits_per_dim": 4.0, "validation_bits_per_dim": 3.9, "seconds": 2}]
    assert history_curve(old, "train") == [4.0]
    assert history_curve(old, "val") == [3.9]
    assert history_objective(old) is None


def test_progress_off_a_terminal_is_one_line_per_epoch_on_stderr(splits, capsys):
    fit("pixelcnn", TINY, splits, TrainConfig(epochs=2, batch_size=32), progress=True)
    out, err = capsys.readouterr()  # pytest's stderr is not a terminal, as a redirected file
    assert out == ""  # stdout is kept for the command's JSON
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("pixelcnn epoch 1/2: nll bits/dim train ")
    assert ", val " in lines[0]


def test_a_vae_run_reports_its_objective_and_its_bound_by_name(tmp_path):
    job = TrainJob(
        "vae",
        "digits:train",
        str(tmp_path / "vae.onnx"),
        normal_classes=[0, 1],
        model={"latent": 2, "hidden": 4},
        train=TrainConfig(epochs=1),
        progress=False,
    )
    _, summary = run(job)
    # The one-sample negative ELBO training early-stops on, and the bundle's K-sample bound.
    assert summary["val_neg_elbo_bits_per_dim"] != summary["val_iwae_bits_per_dim"]
    assert "validation_bits_per_dim" not in summary
