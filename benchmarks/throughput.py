"""Inference throughput of ONNX Runtime against PyTorch eager on the same model, same images.

    python benchmarks/throughput.py --bundle runs/quality/fashion-mnist-pixelcnn.onnx \
        --bundle runs/quality/fashion-mnist-vae.onnx --out benchmarks/results

(the Fashion-MNIST bundles and checkpoints that `benchmarks/quality.py` writes).

Each (runtime, batch size) runs in its own process: torch and ONNX Runtime thread pools in one
process fight and give unreliable figures. Both use every CPU core (or --threads). The torch side
rebuilds the model from the checkpoint beside the bundle (`<stem>.pt`) and computes the same
outputs as the graph.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_SIZES = (1, 32, 256)


def _images(shape, batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)


def _time(fn, seconds: float) -> tuple[float, int]:
    fn()  # warm-up
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            return elapsed, calls


def worker(runtime: str, bundle_path: str, batch: int, seconds: float, threads: int) -> dict:
    from detectors.bundle import Bundle

    bundle = Bundle.read(bundle_path)
    shape = bundle.spec.input.shape
    images = _images(shape, batch)
    if runtime == "onnxruntime":
        from detectors.runtime import OnnxSession

        session = OnnxSession(bundle, device="cpu", threads=threads)
        outputs = [o.name for o in session.session.get_outputs()]
        elapsed, calls = _time(lambda: session.run(images, outputs), seconds)
    else:
        import torch

        from training.export import PixelCNNGraph, VAEGraph
        from training.train import model_from_checkpoint

        torch.set_num_threads(threads)
        path = Path(bundle_path)
        kind, model, _ = model_from_checkpoint(path.with_suffix(".pt"))
        x = torch.from_numpy(images)
        if kind == "pixelcnn":
            graph = PixelCNNGraph(model).eval()
            args = (x,)
        else:
            noise = bundle.spec.noise
            graph = VAEGraph(model).eval()
            args = (x, torch.randn(batch, noise.samples, noise.latent_dim))

        def step():
            with torch.inference_mode():
                graph(*args)

        elapsed, calls = _time(step, seconds)
    return {
        "runtime": runtime,
        "batch": batch,
        "images_per_s": calls * batch / elapsed,
        "ms_per_batch": 1000 * elapsed / calls,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", action="append", required=True, help="bundle(s) with a checkpoint beside"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--batch", type=int, action="append", help=f"batch sizes (default {BATCH_SIZES})"
    )
    parser.add_argument("--worker", choices=["onnxruntime", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                worker(args.worker, args.bundle[0], args.batch[0], args.seconds, args.threads)
            )
        )
        return

    from benchmarks.common import machine, write_results
    from detectors.bundle import Bundle

    results, rows = {"machine": machine(), "threads": args.threads, "runs": []}, []
    for bundle_path in args.bundle:
        kind = Bundle.read(bundle_path).kind
        for batch in args.batch or BATCH_SIZES:
            figures = {}
            for runtime in ("onnxruntime", "torch"):
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    runtime,
                    "--bundle",
                    bundle_path,
                    "--batch",
                    str(batch),
                    "--seconds",
                    str(args.seconds),
                    "--threads",
                    str(args.threads),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
                figures[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
                results["runs"].append({"bundle": bundle_path, "kind": kind, **figures[runtime]})
            ort, eager = figures["onnxruntime"]["images_per_s"], figures["torch"]["images_per_s"]
            rows.append(f"| {kind} | {batch} | {ort:,.0f} | {eager:,.0f} | {ort / eager:.2f} |")
    table = "\n".join(
        [
            f"Inference throughput, images/s ({args.threads} threads, "
            f"{results['machine']['cpus']} CPUs; "
            "each runtime in its own process)",
            "",
            "| model | batch | ONNX Runtime | PyTorch eager | ratio |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    write_results(args.out, "throughput", results, table)


if __name__ == "__main__":
    main()
