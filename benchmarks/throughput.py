"""Inference throughput: ONNX Runtime fp32 and int8 against PyTorch's best on the same model.

    python benchmarks/throughput.py --bundle runs/fmnist-pixelcnn.onnx \
        --bundle runs/fmnist-vae.onnx --out benchmarks/results [--tuning]

Each bundle needs its checkpoint beside it (`<stem>.pt`, as `normalcy train` writes) and its int8
copy (`<stem>-int8.onnx`, as `normalcy quantize BUNDLE --data ... --out <stem>-int8.onnx` writes).

Columns, each (runtime, batch size) in its own process (torch and ONNX Runtime thread pools in one
process fight and give unreliable figures), all on the same random images:
  onnxruntime        the fp32 bundle through detectors.runtime.OnnxSession (what `serve` runs)
  onnxruntime-int8   the int8 bundle, the same way
  torch-eager        the model rebuilt from its checkpoint, same outputs as the graph
  torch-compile      torch.compile of the same module, fp32
  torch-compile-bf16 torch.compile under CPU autocast to bfloat16
The runtimes of one (model, batch) run back to back, so the ratios to the best PyTorch column come
from the same stretch of time; `--rounds N` repeats the whole sweep and keeps the median.

With `--tuning`, ONNX Runtime variants of the fp32 and int8 graphs: graph optimisation level
(basic, extended; the default is all), one thread instead of all, and the 256-way head rewritten
from LogSoftmax + GatherElements to GatherElements - ReduceLogSumExp (the observed level's logit
minus the log-partition, without the (B, 256, C, H, W) log-softmax tensor).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_SIZES = (1, 32, 256)
ORT = ("onnxruntime", "onnxruntime-int8")
TORCH = ("torch-eager", "torch-compile", "torch-compile-bf16")
TUNING = ("opt-basic", "opt-extended", "threads-1", "fused-head")


def _images(shape, batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)


def _time(fn, seconds: float) -> tuple[float, int]:
    fn()  # warm-up (and, for torch.compile, the compilation)
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            return elapsed, calls


def int8_path(bundle_path: str) -> Path:
    path = Path(bundle_path)
    return path.with_name(f"{path.stem}-int8.onnx")


def fuse_head(model_bytes: bytes) -> bytes:
    """LogSoftmax(x) -> GatherElements(., i) rewritten as GatherElements(x, i) -
    ReduceLogSumExp(x): the same log-probability of the observed level (i has size 1 on the
    axis), without materialising the log-softmax of every level."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    softmaxes = {n.output[0]: n for n in graph.node if n.op_type == "LogSoftmax"}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes, fused = [], set()
    for node in graph.node:
        source = softmaxes.get(node.input[0]) if node.op_type == "GatherElements" else None
        if source is None or readers[node.input[0]] != 1:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            nodes.append(copy)
            continue
        # In the gather's place (its indices exist by then): picked logit minus log-partition.
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        logits, base = source.input[0], source.name
        axes = helper.make_tensor(f"{base}_axes", onnx.TensorProto.INT64, [1], [axis])
        graph.initializer.append(axes)
        nodes += [
            helper.make_node(
                "GatherElements", [logits, node.input[1]], [f"{base}_picked"], axis=axis
            ),
            helper.make_node("ReduceLogSumExp", [logits, axes.name], [f"{base}_lse"], keepdims=1),
            helper.make_node("Sub", [f"{base}_picked", f"{base}_lse"], [node.output[0]]),
        ]
        fused.add(source.name)  # the LogSoftmax goes
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.name not in fused)
    return model.SerializeToString()


def _ort_worker(runtime: str, bundle, images: np.ndarray, threads: int, seconds: float):
    import onnxruntime as ort

    from detectors.runtime import OnnxSession, vae_noise

    if runtime in ORT:
        session = OnnxSession(bundle, device="cpu", threads=threads)
        outputs = [o.name for o in session.session.get_outputs()]
        return _time(lambda: session.run(images, outputs), seconds)
    # tuning variants: "<precision>:<variant>"
    _, variant = runtime.split(":")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if variant == "threads-1" else threads
    level = {
        "opt-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "opt-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(variant, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.graph_optimization_level = level
    model = fuse_head(bundle.model_bytes) if variant == "fused-head" else bundle.model_bytes
    if variant == "fused-head" and model == bundle.model_bytes:
        return None  # no LogSoftmax + GatherElements head (the VAE)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {bundle.spec.input.name: images}
    if bundle.spec.noise:
        feeds[bundle.spec.noise.input] = vae_noise(bundle.spec.noise, len(images))
    outputs = [o.name for o in session.get_outputs()]
    return _time(lambda: session.run(outputs, feeds), seconds)


def _torch_worker(runtime: str, bundle_path: str, bundle, images, threads: int, seconds: float):
    import torch

    from training.export import PixelCNNGraph, VAEGraph
    from training.train import model_from_checkpoint

    torch.set_num_threads(threads)
    path = Path(bundle_path)
    kind, model, _ = model_from_checkpoint(path.with_suffix(".pt"))
    x = torch.from_numpy(images)
    if kind == "pixelcnn":
        # The served graph also runs the 3x3 local model (its region densities are a few
        # matrix products, left out here).
        local_path = path.with_name(f"{path.stem}.local.pt")
        local = model_from_checkpoint(local_path)[1] if local_path.exists() else None
        graph, args = PixelCNNGraph(model, local=local).eval(), (x,)
    else:
        noise = bundle.spec.noise
        graph = VAEGraph(model).eval()
        args = (x, torch.randn(len(images), noise.samples, noise.latent_dim))
    if runtime != "torch-eager":
        graph = torch.compile(graph)
    bf16 = runtime == "torch-compile-bf16"

    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            graph(*args)

    return _time(step, seconds)


def worker(runtime: str, bundle_path: str, batch: int, seconds: float, threads: int) -> dict:
    from detectors.bundle import Bundle

    int8 = runtime == "onnxruntime-int8" or runtime.startswith("int8:")
    bundle = Bundle.read(int8_path(bundle_path) if int8 else bundle_path)
    images = _images(bundle.spec.input.shape, batch)
    if runtime in TORCH:
        elapsed, calls = _torch_worker(runtime, bundle_path, bundle, images, threads, seconds)
    else:
        timed = _ort_worker(runtime, bundle, images, threads, seconds)
        if timed is None:
            return {"runtime": runtime, "batch": batch, "not_applicable": True}
        elapsed, calls = timed
    return {
        "runtime": runtime,
        "batch": batch,
        "images_per_s": calls * batch / elapsed,
        "ms_per_image": 1000 * elapsed / (calls * batch),
        "threads": threads,
    }


def measure(runtime: str, bundle_path: str, batch: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", runtime, "--bundle", bundle_path]
    command += ["--batch", str(batch), "--seconds", str(args.seconds)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        return {"runtime": runtime, "batch": batch, "error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cell(figure: dict | None, best_torch: float) -> str:
    if figure == "n/a":
        return "n/a"
    if not figure or "images_per_s" not in figure:
        return "failed"
    rate = figure["images_per_s"]
    return f"{rate:,.0f} ({rate / best_torch:.2f})" if best_torch else f"{rate:,.0f}"


def _parity(bundle_path: str) -> str:
    from detectors.bundle import Bundle

    precision = Bundle.read(int8_path(bundle_path)).spec.precision
    parity = precision.parity
    auroc = "" if parity.auroc_change is None else f", AUROC change {parity.auroc_change:+.4f}"
    return (
        f"int8 parity: mean |delta {parity.score}| {parity.mean_abs_delta_bits_per_dim:.4f} "
        f"bits/dim (max {parity.max_abs_delta_bits_per_dim:.4f}) on {parity.n_images} held-out "
        f"normal images{auroc}; {len(precision.fp32_nodes)} of "
        f"{precision.quantized_nodes + len(precision.fp32_nodes)} layers kept in fp32"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", action="append", required=True, help="fp32 bundle(s), checkpoint beside"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="throughput", help="results file stem")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=1, help="sweeps; the median is kept")
    parser.add_argument("--tuning", action="store_true", help="also the ONNX Runtime variants")
    parser.add_argument(
        "--batch", type=int, action="append", help=f"batch sizes (default {BATCH_SIZES})"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(args.worker, args.bundle[0], args.batch[0], args.seconds, args.threads)
        print(json.dumps(figures))
        return

    from benchmarks.common import machine, write_results
    from detectors.bundle import Bundle

    runtimes = [*ORT, *TORCH]
    if args.tuning:
        runtimes += [f"{p}:{v}" for p in ("fp32", "int8") for v in TUNING]
    results = {
        "machine": machine(),
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
        "runs": [],
    }
    rows, notes = [], []
    for bundle_path in args.bundle:
        kind = Bundle.read(bundle_path).kind
        notes.append(f"- {kind}: {_parity(bundle_path)}")
        for batch in args.batch or BATCH_SIZES:
            rounds: dict[str, list[dict]] = {runtime: [] for runtime in runtimes}
            for _ in range(args.rounds):
                for runtime in runtimes:
                    figure = measure(runtime, bundle_path, batch, args)
                    figure["load_average"] = os.getloadavg()[0]
                    rounds[runtime].append(figure)
                    results["runs"].append({"bundle": bundle_path, "kind": kind, **figure})
            median = {}
            for runtime, figures in rounds.items():
                rates = [f["images_per_s"] for f in figures if "images_per_s" in f]
                median[runtime] = {"images_per_s": statistics.median(rates)} if rates else None
                if any(f.get("not_applicable") for f in figures):
                    median[runtime] = "n/a"
            best = max((median[r]["images_per_s"] for r in TORCH if median[r]), default=0.0)
            cells = [_cell(median[r], best) for r in runtimes]
            rows.append(f"| {kind} | {batch} | " + " | ".join(cells) + " |")
    results["load_average_at_end"] = os.getloadavg()
    start, end = results["load_average_at_start"][0], results["load_average_at_end"][0]
    table = "\n".join(
        [
            f"Inference throughput, images/s, and in brackets the ratio to the best PyTorch "
            f"column ({args.threads} threads, {results['machine']['cpus']} CPUs, each runtime "
            f"in its own process, median of {args.rounds} round(s); 1-minute load average "
            f"{start:.1f} at the start, {end:.1f} at the end)",
            "",
            "| model | batch | " + " | ".join(runtimes) + " |",
            "|---|---:|" + "---:|" * len(runtimes),
            *rows,
            "",
            *notes,
            "",
            f"`{results['command']}`",
        ]
    )
    write_results(args.out, args.name, results, table)


if __name__ == "__main__":
    main()
