"""Train the PixelCNN and the VAE on Fashion-MNIST within a stated budget; report test bits/dim.

    python benchmarks/fashion_mnist.py --seconds 600 --out benchmarks/results          # CPU
    python benchmarks/fashion_mnist.py --device cuda --seconds 150 --out DIR           # a GPU

Writes the bundles, their checkpoints, `fashion_mnist.json` and `fashion_mnist.md`. Test bits/dim is
measured on all 10,000 test images: exact NLL for the PixelCNN, the K-sample importance-weighted bound
for the VAE (through the exported ONNX graph, so it is what the service computes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DEFAULT_DATASETS, dataset_spec, machine, write_results  # noqa: E402
from detectors.bundle import Bundle  # noqa: E402
from detectors.datasets import load  # noqa: E402
from detectors.runtime import OnnxSession  # noqa: E402
from training.pipeline import TrainJob, run  # noqa: E402
from training.train import TrainConfig  # noqa: E402

MODELS = {
    "pixelcnn": {"hidden": 64, "layers": 8, "kernel": 5, "head": 128},
    "vae": {"latent": 16, "hidden": 32, "likelihood": "logistic"},
}
QUICK_MODELS = {"pixelcnn": {"hidden": 16, "layers": 3, "kernel": 3, "head": 32},
                "vae": {"latent": 8, "hidden": 8}}


def test_bits_per_dim(bundle_path: Path, images: np.ndarray, batch: int = 500) -> float:
    bundle = Bundle.read(bundle_path)
    session = OnnxSession(bundle, device="cpu")
    output = "nll_bits_per_dim" if bundle.kind == "pixelcnn" else "iwae_bits_per_dim"
    values = [session.run(images[i:i + batch], [output])[output] for i in range(0, len(images), batch)]
    return float(np.concatenate(values).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=600, help="training budget per model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny models and data: checks the script")
    args = parser.parse_args()

    train_spec = dataset_spec(args.datasets, "fashion-mnist", "train")
    test = load(dataset_spec(args.datasets, "fashion-mnist", "t10k")).images
    if args.quick:
        test = test[:300]
    results = {"machine": machine(), "device": args.device, "budget_seconds_per_model": args.seconds,
               "models": {}}
    rows = []
    for kind, model in (QUICK_MODELS if args.quick else MODELS).items():
        out = args.out / f"fashion_{kind}.onnx"
        cfg = TrainConfig(epochs=1 if args.quick else 1000, batch_size=args.batch_size, lr=2e-3 if kind == "vae" else 1e-3,
                          max_minutes=args.seconds / 60, patience=3, device=args.device,
                          warmup_steps=200)
        job = TrainJob(kind, train_spec, str(out), model=model, train=cfg, validation=0.05,
                       calibration=2000 / 60000, progress=False)
        started = time.monotonic()
        bundle, summary = run(job)
        seconds = time.monotonic() - started
        bpd = test_bits_per_dim(out, test)
        training = bundle.metadata["training"]
        results["models"][kind] = {
            "hyperparameters": model, "parameters": bundle.metadata["model"]["parameters"],
            "epochs": training["epochs"], "stopped": training["stopped"],
            "train_seconds": training["train_seconds"], "total_seconds": round(seconds, 1),
            "test_bits_per_dim": bpd, "n_test": len(test), "bundle": str(out),
        }
        rows.append(f"| {kind} | {bundle.metadata['model']['parameters']:,} | {training['epochs']} | "
                    f"{training['train_seconds']:.0f} | {bpd:.3f} |")
    table = "\n".join([
        f"Fashion-MNIST test bits/dim ({len(test)} test images; device {args.device}; "
        f"{machine().get('gpu', 'CPU')}; budget {args.seconds:.0f} s per model)",
        "",
        "| model | parameters | epochs | train s | test bits/dim |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])
    write_results(args.out, "fashion_mnist", results, table)


if __name__ == "__main__":
    main()
