"""`make demo`: both models on scikit-learn's bundled digits, end to end, in a few minutes on 2
CPUs.

Digits 0-4 are normal. Each model is trained on digits:train (normal classes only), exported and
calibrated on a held-out part of it; then digits:test is scored, 0-4 as normal and 5-9 as anomalies.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from detectors import Detector
from detectors.evaluation import evaluate
from detectors.sources import load_digits

from .pipeline import TrainJob, run
from .train import TrainConfig

NORMAL = [0, 1, 2, 3, 4]
SETTINGS = {
    "pixelcnn": (
        {"hidden": 48, "layers": 5, "kernel": 3, "head": 96},
        TrainConfig(epochs=40, patience=5),
    ),
    "vae": ({"latent": 8, "hidden": 32}, TrainConfig(epochs=150, patience=10, lr=2e-3)),
}
QUICK = {
    "pixelcnn": ({"hidden": 16, "layers": 3, "kernel": 3, "head": 32}, TrainConfig(epochs=2)),
    "vae": ({"latent": 4, "hidden": 8}, TrainConfig(epochs=2)),
}


def demo(out: str | Path = "runs/demo", *, quick: bool = False, progress: bool = True) -> str:
    out = Path(out)
    test = load_digits("test")
    is_normal = np.isin(test.labels, NORMAL)
    lines = [
        f"normal digits {NORMAL}; test: {is_normal.sum()} normal, {(~is_normal).sum()} anomalous "
        f"(digits:test)",
        "",
    ]
    header = (
        f"{'model':9} {'score':27} {'test bits/dim':>13} {'AUROC':>6} {'FPR@alpha':>9} "
        f"{'alpha':>5} {'train s':>7}"
    )
    lines += [header, "-" * len(header)]
    for kind, (model, train) in (QUICK if quick else SETTINGS).items():
        started = time.monotonic()
        job = TrainJob(
            kind,
            "digits:train",
            str(out / f"{kind}.onnx"),
            normal_classes=NORMAL,
            model=model,
            train=train,
            alpha=0.05,
            validation=0.15,
            calibration=0.25,
            progress=progress,
        )
        bundle, _ = run(job)
        seconds = time.monotonic() - started
        detector = Detector(bundle, device="cpu")
        report = evaluate(detector, test.images[is_normal], test.images[~is_normal])
        for row in report["rows"]:
            mark = " *" if row["default"] else ""
            lines.append(
                f"{kind:9} {row['score'] + mark:27} {report['normal_bits_per_dim']:13.3f} "
                f"{row['auroc']:6.3f} {row['fpr_at_alpha']:9.3f} {report['alpha']:5.2f} "
                f"{seconds:7.0f}"
            )
    lines += [
        "",
        "* default score. Bundles: " + ", ".join(str(out / f"{k}.onnx") for k in SETTINGS),
    ]
    return "\n".join(lines)
