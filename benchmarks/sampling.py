"""PixelCNN sampling speed: the cached sampler against the naive one, images/s.

    python benchmarks/sampling.py           # 28x28, 64 channels, 6 layers (minutes on 2 CPUs)
    python benchmarks/sampling.py --quick   # tiny model, 8x8 images (seconds)
    python benchmarks/sampling.py --checkpoint runs/demo/pixelcnn.pt --device cuda

The naive sampler reruns the network on every row up to the current one for each sub-pixel; the
cached one computes each feature once (training/models/sampling.py). Both draw with the same
generator, so the benchmark also checks that they return identical images. Without --checkpoint
the model has random weights: speed does not depend on what the weights are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, device) -> tuple[float, object]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", help="a PixelCNN checkpoint (.pt); default: random weights")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--size", type=int, default=28, help="image height and width")
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        help="cached-sampler batch sizes (default 1, 16, 64, 256)",
    )
    parser.add_argument("--naive-batch", type=int, default=8, help="images the naive sampler draws")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny model and images (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from benchmarks.common import machine, write_results
    from training.models import PixelCNN, PixelCNNConfig
    from training.models.sampling import sample_naive
    from training.train import model_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quick:
        args.hidden, args.layers, args.kernel, args.size, args.naive_batch = 16, 3, 3, 8, 4
        args.batch = args.batch or [1, 16]
    batches = args.batch or [1, 16, 64, 256]
    if args.checkpoint:
        kind, model, _ = model_from_checkpoint(args.checkpoint)
        if kind != "pixelcnn":
            sys.exit(f"{args.checkpoint} holds a {kind}, not a PixelCNN")
        described = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = PixelCNN(
            PixelCNNConfig(
                hidden=args.hidden, layers=args.layers, kernel=args.kernel, head=2 * args.hidden
            )
        ).eval()
        described = (
            f"random weights, hidden {args.hidden}, {args.layers} layers, kernel {args.kernel}"
        )
    model = model.to(device)
    num_classes = model.cfg.num_classes
    size = args.size

    def labels(n: int):
        return torch.arange(n, device=device) % num_classes if num_classes else None

    def fast(n: int, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        return model.sample(n, size, size, label=labels(n), generator=gen)

    fast(1)  # warm-up: allocator, kernels
    runs = []
    for n in batches:
        seconds, _ = _timed(lambda n=n: fast(n), device)
        runs.append(
            {"sampler": "cached", "batch": n, "seconds": seconds, "images_per_s": n / seconds}
        )
        print(f"cached  batch {n:4d}: {n / seconds:10.2f} images/s ({seconds:.2f} s)", flush=True)
    n = args.naive_batch
    gen = torch.Generator(device=device).manual_seed(1)
    seconds, naive = _timed(
        lambda: sample_naive(model, n, size, size, label=labels(n), generator=gen), device
    )
    runs.append({"sampler": "naive", "batch": n, "seconds": seconds, "images_per_s": n / seconds})
    print(f"naive   batch {n:4d}: {n / seconds:10.2f} images/s ({seconds:.2f} s)", flush=True)
    identical = bool(torch.equal(naive, fast(n, seed=1)))

    same_batch = next((r for r in runs if r["sampler"] == "cached" and r["batch"] == n), None)
    best = max((r for r in runs if r["sampler"] == "cached"), key=lambda r: r["images_per_s"])
    naive_rate = runs[-1]["images_per_s"]
    rows = [
        f"| {r['sampler']} | {r['batch']} | {r['images_per_s']:,.2f} | {r['seconds']:.2f} |"
        for r in runs
    ]
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    ratio = f"Best cached / naive: {best['images_per_s'] / naive_rate:,.0f}x"
    if same_batch:
        ratio += f"; at the same batch ({n}): {same_batch['images_per_s'] / naive_rate:,.0f}x"
    table = "\n".join(
        [
            f"PixelCNN sampling, {size}x{size}, {described}; "
            f"device {device.type}, {threads} threads",
            "",
            "| sampler | batch | images/s | seconds |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"{ratio}. Same generator, identical images: {identical}.",
        ]
    )
    results = {
        "machine": machine(),
        "model": described,
        "size": size,
        "device": device.type,
        "threads": threads,
        "identical": identical,
        "runs": runs,
    }
    write_results(args.out, "sampling_quick" if args.quick else "sampling", results, table)
    if not identical:
        sys.exit("the cached sampler disagrees with the naive one")


if __name__ == "__main__":
    main()
