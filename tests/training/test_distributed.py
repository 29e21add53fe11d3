"""Training under torchrun: 2 processes on gloo end with the same weights, and `normalcy train` runs
unchanged with only rank 0 writing the bundle. Slow: each run starts two Python processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detectors import Detector

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Run by every rank: a few steps of fit(), then each rank saves the weights it ended with.
RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from detectors.sources import load_digits
    from training import distributed
    from training.data import split
    from training.pipeline import model_config
    from training.train import TrainConfig, fit

    out, kind = sys.argv[1], sys.argv[2]
    world = distributed.setup(cuda=False)
    data = load_digits("train").with_classes([0, 1])
    overrides = {"pixelcnn": {"hidden": 8, "layers": 2, "kernel": 3, "head": 8},
                 "vae": {"latent": 4, "hidden": 8}}[kind]
    cfg = TrainConfig(epochs=2, batch_size=32, warmup_steps=2, seed=0, device="cpu")
    model, result = fit(kind, model_config(kind, data, overrides), split(data, seed=3), cfg,
                        checkpoint=f"{out}/checkpoint.pt", progress=False)
    torch.save(model.state_dict(), f"{out}/rank{world.rank}.pt")
    with open(f"{out}/rank{world.rank}.json", "w") as f:
        json.dump({"world_size": world.world_size, "history": result.history}, f)
    distributed.teardown(world)
""")


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_two_gloo_ranks_end_with_identical_weights(kind, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    torchrun(str(script), str(tmp_path), kind)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["world_size"] == 2
    # Validation (and so early stopping) is the same on both ranks: it is summed over them.
    assert reports[0]["history"] == [
        dict(h, seconds=r["seconds"])
        for h, r in zip(reports[1]["history"], reports[0]["history"], strict=True)
    ]
    assert (tmp_path / "checkpoint.pt").exists()


def test_normalcy_train_runs_unchanged_under_torchrun(tmp_path):
    out = tmp_path / "digits.onnx"
    run = torchrun(
        "-m",
        "normalcy.cli",
        "train",
        "vae",
        "--data",
        "digits:train",
        "--normal-classes",
        "0,1",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--latent",
        "4",
        "--hidden",
        "8",
        "--no-progress",
    )
    summary = json.loads(run.stdout)  # one summary: rank 0's; rank 1 prints nothing
    assert summary["bundle"] == str(out)
    assert summary["epochs"] == 2
    detector = Detector.load(out, device="cpu")
    assert detector.spec.training.extra["n_train"] > 0
    # rank 0 alone writes the bundle, its checkpoint and the training report
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits-report",
        "digits.onnx",
        "digits.pt",
    ]
