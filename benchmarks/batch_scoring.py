"""Batch scoring: `normalcy score` end to end on folders of PNGs against the in-process ceiling.

    python benchmarks/batch_scoring.py            # 10k and 100k PNGs (mostly scoring the 100k)
    python benchmarks/batch_scoring.py --quick    # 1k and 4k PNGs, a tiny model: a few minutes

It writes the PNGs (28x28 grey: MNIST test images when ../shared/datasets is there, else upscaled
digits) into a temporary folder outside the repository, trains a small PixelCNN (or takes --bundle),
and measures, each in its own process:

- ceiling: `Detector.score` on the same images already decoded in memory, same model and batch
  size (the best a batch job could do: ONNX Runtime plus the score's own post-processing);
- `normalcy score` (local engine) on each folder: wall-clock images/s from process start to exit,
  and the peak memory of its whole process tree (proportional set size, so pages the decoding
  processes share with the main one count once; sampled from /proc every 50 ms);
- `normalcy score --engine ray` on the smaller folder (and the larger one with --ray-all): images/s
  and Ray's start-up time.

Goals (issue 5): end-to-end at least 90% of the ceiling; peak memory for the larger folder within
10% of the smaller one's. Results go to benchmarks/results/batch_scoring[_quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NORMALCY = [sys.executable, "-m", "normalcy.cli"]
PER_FOLDER = 1000  # PNGs per sub-folder, as large image sets are usually sharded


# --- data and model -------------------------------------------------------------------------------
def source_images(datasets: Path, split: str, n: int) -> np.ndarray:
    """(n, 1, 28, 28) uint8: MNIST when present, else scikit-learn's digits upscaled (cycled)."""
    path = datasets / "mnist" / f"{split}-images-idx3-ubyte.gz"
    if path.exists():
        from detectors.sources import read_idx

        images = read_idx(path)[:, None]
    else:
        from PIL import Image

        from detectors.sources import load_digits

        digits = load_digits("train" if split == "train" else "test").images[:, 0]
        big = [Image.fromarray(d).resize((28, 28), Image.Resampling.BILINEAR) for d in digits]
        images = np.stack([np.asarray(image) for image in big])[:, None]
    return images[np.arange(n) % len(images)]


def write_pngs(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    for i, image in enumerate(images):
        sub = folder / f"{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(sub / f"{i:07d}.png", compress_level=6)


def train_bundle(work: Path, datasets: Path, args) -> Path:
    np.save(work / "train.npy", source_images(datasets, "train", args.train_images))
    out = work / "bench.onnx"
    command = [
        *NORMALCY,
        "train",
        args.kind,
        "--data",
        f"npy:{work / 'train.npy'}",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--hidden",
        str(args.hidden),
        "--no-progress",
    ]
    if args.kind == "pixelcnn":
        command += ["--layers", str(args.layers)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return out


# --- measurements --------------------------------------------------------------------------------
def ceiling(bundle: str, images_path: str, batch_size: int, device: str) -> dict:
    """Run in its own process: Detector.score over decoded images, batch by batch."""
    from detectors import Detector

    images = np.load(images_path)
    detector = Detector.load(bundle, device=device)
    detector.score(images[:batch_size])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        detector.score(images[start : start + batch_size])
    seconds = time.perf_counter() - started
    return {
        "images": len(images),
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "provider": detector.provider,
    }


def _tree_pss_kib(root: int) -> int:
    """Proportional set size of `root` and all its descendants, in KiB (shared pages split)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_score(command: list[str]) -> dict:
    """Run `normalcy score ...`; wall time, peak memory of its process tree, and its summary."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, _tree_pss_kib(process.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{stderr.decode()[-3000:]}")
    summary = json.loads(stdout)
    return {
        "seconds": seconds,
        "images_per_second": summary["processed_this_run"] / seconds,
        "peak_pss_mib": peak_kib / 1024,
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1k and 4k PNGs and a tiny model")
    parser.add_argument("--sizes", type=int, nargs=2, help="two folder sizes (default 10k 100k)")
    parser.add_argument("--bundle", help="a bundle taking 28x28 grey images (default: train one)")
    parser.add_argument("--kind", choices=["pixelcnn", "vae"], default="pixelcnn")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of the job")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--ray-all", action="store_true", help="run Ray on the larger folder too")
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--workdir", type=Path, help="where the PNGs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the PNGs and the bundle")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--ceiling", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ceiling:
        print(json.dumps(ceiling(args.ceiling[0], args.ceiling[1], args.batch_size, args.device)))
        return
    if args.quick:
        args.hidden, args.layers, args.train_images = 16, 2, 600
    small, large = args.sizes or ((1000, 4000) if args.quick else (10_000, 100_000))

    from benchmarks.common import machine, write_results

    work = Path(tempfile.mkdtemp(prefix="normalcy-bench-", dir=args.workdir))
    try:
        clock = time.perf_counter()
        bundle = args.bundle or str(train_bundle(work, args.datasets, args))
        train_seconds = time.perf_counter() - clock
        images = source_images(args.datasets, "t10k", large)
        clock = time.perf_counter()
        for size in (small, large):
            write_pngs(work / f"png{size}", images[:size])
        write_seconds = time.perf_counter() - clock
        np.save(work / "decoded.npy", images[:small])

        common = ["--batch-size", str(args.batch_size), "--device", args.device]
        done = subprocess.run(
            [sys.executable, __file__, "--ceiling", bundle, str(work / "decoded.npy"), *common],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        top = json.loads(done.stdout)

        def score(size: int, engine: str, *extra: str) -> dict:
            return run_score(
                [
                    *NORMALCY,
                    "score",
                    bundle,
                    str(work / f"png{size}"),
                    "--out",
                    str(work / f"{engine}{size}.parquet"),
                    "--engine",
                    engine,
                    "--no-progress",
                    *common,
                    *extra,
                ]
            )

        workers = ["--workers", str(args.workers)]
        local = {size: score(size, "local", *workers) for size in (small, large)}
        ray = {}
        if not args.no_ray:
            for size in (small, large) if args.ray_all else (small,):
                ray[size] = score(size, "ray")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    ratio = local[large]["images_per_second"] / top["images_per_second"]
    memory = local[large]["peak_pss_mib"] / local[small]["peak_pss_mib"]

    def row(name: str, size: int, figures: dict) -> str:
        job = figures["summary"]["images_per_second"]
        return (
            f"| {name} | {size:,} | {figures['images_per_second']:,.0f} | "
            f"{figures['images_per_second'] / top['images_per_second']:.0%} | {job:,.0f} | "
            f"{figures['peak_pss_mib']:,.0f} |"
        )

    rows = [
        f"| ceiling: Detector.score on decoded images | {top['images']:,} | "
        f"{top['images_per_second']:,.0f} | 100% | - | - |"
    ]
    rows += [
        row(f"normalcy score, local engine ({args.workers} decoders)", size, figures)
        for size, figures in local.items()
    ]
    rows += [
        row(
            f"normalcy score, Ray engine (Ray start-up "
            f"{figures['summary'].get('ray_start_seconds', 0):.1f} s)",
            size,
            figures,
        )
        for size, figures in ray.items()
    ]
    table = "\n".join(
        [
            f"Batch scoring of 28x28 PNGs ({args.kind}, batch {args.batch_size}, "
            f"device {args.device}, "
            f"{os.cpu_count()} CPUs)",
            "",
            "| run | images | images/s, process start to exit | of ceiling | images/s, in the job "
            "| peak PSS, MiB (process tree) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"End-to-end at {large:,} images: {ratio:.0%} of the ceiling (goal >= 90%). "
            f"Peak memory {large:,} / {small:,} images: {memory:.2f} (goal: within 10%).",
        ]
    )
    if ray:
        table += (
            f" Ray / local engine at {small:,} images: "
            f"{ray[small]['images_per_second'] / local[small]['images_per_second']:.2f}."
        )
    results = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "bundle": bundle,
        "train_seconds": train_seconds,
        "write_png_seconds": write_seconds,
        "ceiling": top,
        "local": local,
        "ray": ray,
        "ratio_to_ceiling": ratio,
        "peak_memory_ratio": memory,
    }
    name = "batch_scoring_quick" if args.quick else "batch_scoring"
    write_results(args.out, name, results, table)


if __name__ == "__main__":
    main()
