"""Serving benchmark: `normalcy serve` under concurrent load, against its in-process ceiling and
against BentoML. Figures, not tests.

For the VAE and the PixelCNN bundle, at concurrency 1, 8 and 64:
  (a) normalcy serve with micro-batching (max_batch_size 64, the default max_wait_ms);
  (b) normalcy serve with max_batch_size 1 (no batching);
  (c) in process, no HTTP: Detector.score on batches of size = concurrency (the ceiling);
  (d) BentoML serving the same bundle with adaptive batching (benchmarks/bentoml/, own venv).
Load generator: benchmarks/loadgen.py, closed loop over keep-alive connections on loopback, one
image per request as a JSON pixel array {"images": [(C, H, W)]}; (a), (b) and (d) get the same
bodies and do the same work per image (ONNX Runtime, score correction, conformal p-value).
Peak memory: VmHWM of the server (BentoML: summed over its processes). Every server and the
in-process run live in their own processes.

    python benchmarks/serving.py --quick        # tiny digits bundles, 2 s per point (a check)
    python benchmarks/serving.py                # 28x28 bundles, 15 s per point
    python benchmarks/serving.py --device cuda --peak-tflops 67   # on a GPU machine

Bundles: --bundle vae=PATH --bundle pixelcnn=PATH, or made once with `normalcy train` into
benchmarks/results/serving-work/ (Fashion-MNIST class 0 when /work/shared/datasets has it, else the
bundled digits; weights barely trained: only the cost per image matters here).
Writes benchmarks/results/serving.json and .md (serving_quick.* with --quick, not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from common import DEFAULT_DATASETS  # noqa: E402

RESULTS = HERE / "results"
WORK = RESULTS / "serving-work"  # bundles, server logs, BentoML's home: not committed
BENTO_PYTHON = ROOT / ".venv-bentoml" / "bin" / "python"
KINDS = ("vae", "pixelcnn")


# --- bundles and request bodies -----------------------------------------------------------------
DATASETS = [DEFAULT_DATASETS]  # --datasets replaces it


def data_spec(quick: bool) -> tuple[str, str]:
    """(training data spec, test data spec) for the bundles and the request images."""
    if not quick:
        for name in ("fashion-mnist", "mnist"):
            folder = DATASETS[0] / name
            if (folder / "train-images-idx3-ubyte.gz").exists():
                return (
                    f"idx:{folder / 'train-images-idx3-ubyte.gz'}",
                    f"idx:{folder / 't10k-images-idx3-ubyte.gz'}",
                )
        print(
            f"note: no MNIST-style data under {DATASETS[0]}; using the 8x8 digits", file=sys.stderr
        )
    return "digits:train", "digits:test"


def make_bundle(kind: str, out: Path, quick: bool) -> Path:
    train_spec, _ = data_spec(quick)
    size = (
        {
            "pixelcnn": ["--hidden", "16", "--layers", "3", "--kernel", "3"],
            "vae": ["--hidden", "8", "--latent", "4"],
        }[kind]
        if quick
        else []
    )
    command = [
        sys.executable,
        "-m",
        "normalcy.cli",
        "train",
        kind,
        "--data",
        train_spec,
        "--normal-classes",
        "0",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--max-minutes",
        "0.2" if quick else "1",
        "--no-progress",
        "--device",
        "cpu",
        *size,
    ]
    print(f"making {out} ({' '.join(command[3:])})", file=sys.stderr)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out


def bundles(args) -> dict[str, Path]:
    given = dict(item.split("=", 1) for item in args.bundle)
    folder = WORK / ("bundles-quick" if args.quick else "bundles")
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for kind in args.models:
        path = Path(given[kind]) if kind in given else folder / f"{kind}.onnx"
        found[kind] = path if path.exists() else make_bundle(kind, path, args.quick)
    return found


def request_images(bundle: Path, quick: bool, count: int = 64) -> np.ndarray:
    from detectors.bundle import Bundle
    from detectors.sources import load

    shape = Bundle.read(bundle).spec.input.shape
    images = load(data_spec(quick)[1]).images[:count]
    if images.shape[1:] != shape:
        images = np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8)
    return images


def bodies(images: np.ndarray, host: str, port: int, path: str) -> list[bytes]:
    return [
        loadgen.http_request(
            host, port, path, json.dumps({"images": [img.tolist()]}).encode(), "application/json"
        )
        for img in images
    ]


# --- processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident memory) summed over a process and its descendants, in MiB."""
    total = 0
    for each in descendants(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1) if total else None


class Server:
    def __init__(
        self,
        command: list[str],
        ready_url: str,
        *,
        env: dict | None = None,
        cwd: Path = ROOT,
        log: Path,
    ):
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"server exited ({self.process.returncode}); see {log}"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        msg = f"server not ready after 120 s; see {log}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: this server only
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._out.close()


def post(url: str, body: bytes) -> dict | list:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def load_points(port: int, requests: list[bytes], args) -> list[dict]:
    points = []
    for concurrency in args.concurrency:
        result = loadgen.run("127.0.0.1", port, requests, concurrency, args.seconds, args.warmup)
        points.append(result.summary())
        print(
            f"    c={concurrency}: {points[-1]['images_per_s']:.0f} images/s, "
            f"p50 {points[-1]['p50_ms']} ms",
            file=sys.stderr,
        )
    return points


def serve_command(folder: Path, port: int, device: str, max_batch_size: int) -> list[str]:
    """`normalcy serve` on a model folder, as every (a) and (b) point runs it."""
    return [
        sys.executable,
        "-m",
        "normalcy.cli",
        "serve",
        "--models",
        str(folder),
        "--port",
        str(port),
        "--device",
        device,
        "--max-batch-size",
        str(max_batch_size),
        "--max-queue-images",
        "4096",
        "--watch-interval-s",
        "0",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def run_normalcy(kind: str, bundle: Path, images: np.ndarray, max_batch_size: int, args) -> dict:
    folder = WORK / "serve-models" / kind
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / f"{kind}.onnx"
    link.unlink(missing_ok=True)
    link.symlink_to(bundle.resolve())
    port = free_port()
    command = serve_command(folder, port, args.device, max_batch_size)
    server = Server(
        command,
        f"http://127.0.0.1:{port}/v2/health/ready",
        log=WORK / f"serve-{kind}-b{max_batch_size}.log",
    )
    try:
        first = post(
            f"http://127.0.0.1:{port}/v1/models/{kind}/score",
            json.dumps({"images": [images[0].tolist()]}).encode(),
        )
        info = post_get(f"http://127.0.0.1:{port}/v1/models/{kind}")
        points = load_points(
            port, bodies(images, "127.0.0.1", port, f"/v1/models/{kind}/score"), args
        )
        return {
            "points": points,
            "peak_rss_mib": peak_rss_mib(server.process.pid),
            "provider": info["provider"],
            "first_score": first["results"][0]["score"],
        }
    finally:
        server.stop()


def post_get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def run_bentoml(kind: str, bundle: Path, images: np.ndarray, args) -> dict:
    port = free_port()
    env = {
        "NORMALCY_BENTO_BUNDLE": str(bundle.resolve()),
        "NORMALCY_BENTO_DEVICE": args.device,
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(WORK / "bentoml-home"),
    }
    command = [
        str(BENTO_PYTHON),
        "-m",
        "bentoml",
        "serve",
        "service:Scorer",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = Server(
        command,
        f"http://127.0.0.1:{port}/readyz",
        env=env,
        cwd=HERE / "bentoml",
        log=WORK / f"bentoml-{kind}.log",
    )
    try:
        first = post(
            f"http://127.0.0.1:{port}/score", json.dumps({"images": [images[0].tolist()]}).encode()
        )
        points = load_points(port, bodies(images, "127.0.0.1", port, "/score"), args)
        return {
            "points": points,
            "peak_rss_mib": peak_rss_mib(server.process.pid),
            "first_score": first[0][0],
        }
    finally:
        server.stop()


def run_in_process(bundle: Path, args) -> dict:
    """(c) in its own process, with ONNX Runtime's default threads and with the service's
    default (every CPU it may use); the ceiling at each batch size is the faster of the two."""
    service_threads = len(os.sched_getaffinity(0))
    variants = {}
    for label, threads in (
        ("ort_default_threads", 0),
        (f"{service_threads}_threads", service_threads),
    ):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--in-process",
            str(bundle),
            "--threads",
            str(threads),
            "--device",
            args.device,
            "--seconds",
            str(args.seconds),
            "--concurrency",
            *map(str, args.concurrency),
        ]
        command += ["--quick"] if args.quick else []
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        variants[label] = json.loads(out)
    best = []
    for i in range(len(args.concurrency)):
        label, run = max(variants.items(), key=lambda item: item[1]["points"][i]["images_per_s"])
        best.append({**run["points"][i], "threads": label})
    return {
        "points": best,
        "variants": variants,
        "provider": run["provider"],
        "peak_rss_mib": max(v["peak_rss_mib"] or 0 for v in variants.values()),
    }


def in_process(bundle: Path, args) -> dict:
    """(c): Detector.score on batches of size = concurrency, timed call by call."""
    from detectors import Detector

    detector = Detector.load(bundle, device=args.device, threads=args.threads or None)
    images = request_images(bundle, args.quick)
    points = []
    for batch_size in args.concurrency:
        batch = np.resize(images, (batch_size, *images.shape[1:]))
        for _ in range(3):
            detector.score(batch)
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            began = time.perf_counter()
            detector.score(batch)
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
        lat_ms = np.asarray(latencies) * 1000
        points.append(
            {
                "concurrency": batch_size,
                "batch_size": batch_size,
                "calls": len(latencies),
                "images_per_s": batch_size * len(latencies) / elapsed,
                "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)),
            }
        )
    return {
        "points": points,
        "peak_rss_mib": peak_rss_mib(os.getpid()),
        "provider": detector.provider,
    }


# --- FLOPs, for GPU figures --------------------------------------------------------------------
def flops_per_image(bundle: Path) -> float | None:
    """2 x multiply-adds of the Conv, ConvTranspose, Gemm and MatMul nodes for one image (onnx)."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    model = onnx.load_from_string(bundle.read_bytes())
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    shapes.update(weights)
    total = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes:
            w, out = shapes.get(node.input[1]), shapes[node.output[0]]  # w: (Cout, Cin/g, kh, kw)
            if w and out and all(out):
                total += 2.0 * np.prod(out) * np.prod(w[1:])
        elif node.op_type == "ConvTranspose" and node.input[0] in shapes:
            w, x = shapes.get(node.input[1]), shapes[node.input[0]]  # w: (Cin, Cout/g, kh, kw)
            if w and x and all(x):
                total += 2.0 * np.prod(x) * np.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul") and node.output[0] in shapes:
            a, out = shapes.get(node.input[0]), shapes[node.output[0]]
            if a and out and all(out) and a[-1]:
                total += 2.0 * np.prod(out) * a[-1]
    return float(total)


# --- report ------------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(results: dict) -> None:
    for runs in results["models"].values():
        table = []
        for i, c in enumerate(results["concurrency"]):
            row = {"concurrency": c}
            for key in ("a_batched", "b_unbatched", "c_in_process", "d_bentoml"):
                if key in runs:
                    row[key] = runs[key]["points"][i]["images_per_s"]
            row["a_over_c"] = ratio(row.get("a_batched"), row.get("c_in_process"))
            row["a_over_d"] = ratio(row.get("a_batched"), row.get("d_bentoml"))
            row["a_over_b"] = ratio(row.get("a_batched"), row.get("b_unbatched"))
            table.append(row)
        runs["ratios"] = table


def markdown(results: dict) -> str:
    names = {
        "a_batched": "(a) normalcy, batched",
        "b_unbatched": "(b) normalcy, max_batch_size=1",
        "c_in_process": "(c) in process, no HTTP",
        "d_bentoml": "(d) BentoML, adaptive",
    }
    lines = [
        f"# Serving benchmark ({'quick' if results['quick'] else 'full'})",
        "",
        f"{results['date']}, {results['machine']}, device {results['device']}, "
        f"{results['seconds']} s per point after {results['warmup_s']} s warm-up. "
        f"Load generator: {results['load_generator']}",
        "",
    ]
    for kind, runs in results["models"].items():
        lines += [
            f"## {kind} ({runs['input']}, {runs.get('flops_per_image') or '?'} FLOP/image)",
            "",
            "| configuration | c | images/s | p50 ms | p99 ms | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in names.items():
            if key not in runs:
                continue
            for point in runs[key]["points"]:
                p50, p99 = point.get("p50_ms"), point.get("p99_ms")
                shown = (
                    f"{label}, {point['threads'].replace('_', ' ')}"
                    if "threads" in point
                    else label
                )
                lines.append(
                    f"| {shown} | {point['concurrency']} | {point['images_per_s']:.0f} | "
                    f"{p50 and round(p50, 2)} | {p99 and round(p99, 2)} | "
                    f"{runs[key].get('peak_rss_mib')} |"
                )
        lines += ["", "| c | (a)/(c) | (a)/(d) | (a)/(b) |", "|---:|---:|---:|---:|"]
        for row in runs["ratios"]:
            lines.append(
                f"| {row['concurrency']} | {row['a_over_c']} | {row['a_over_d']} | "
                f"{row['a_over_b']} |"
            )
        if runs.get("gpu_fraction_of_peak"):
            lines.append(
                f"\nAt c=64, (a) reaches {runs['gpu_fraction_of_peak']:.1%} of "
                f"{results['peak_tflops']} TFLOP/s."
            )
        lines.append("")
    for note in results["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny bundles, short points")
    parser.add_argument("--bundle", action="append", default=[], help="KIND=PATH (vae, pixelcnn)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--models", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, help="measured seconds per point (15; quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per point (3; quick 0.5)")
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DEFAULT_DATASETS,
        help="folder holding fashion-mnist/ and mnist/",
    )
    parser.add_argument("--skip-bentoml", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, help="the device's arithmetic peak, for GPU runs"
    )
    parser.add_argument("--in-process", metavar="BUNDLE", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    DATASETS[0] = args.datasets
    args.seconds = args.seconds or (2.0 if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 3.0)
    if args.in_process:
        print(json.dumps(in_process(Path(args.in_process), args)))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    notes = []
    bentoml = BENTO_PYTHON.exists() and not args.skip_bentoml
    if not bentoml:
        notes.append(
            "(d) BentoML not measured: run benchmarks/bentoml/setup.sh first"
            if not args.skip_bentoml
            else "(d) BentoML skipped (--skip-bentoml)"
        )
    results = {
        "quick": args.quick,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "device": args.device,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "peak_tflops": args.peak_tflops,
        "load_generator": loadgen.__doc__.split("\n\n")[0].replace("\n", " "),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "models": {},
        "notes": notes,
    }
    for kind, bundle in bundles(args).items():
        images = request_images(bundle, args.quick)
        runs: dict = {
            "bundle": str(bundle),
            "input": "x".join(map(str, images.shape[1:])),
            "flops_per_image": flops_per_image(bundle),
        }
        print(f"{kind}: (c) in process", file=sys.stderr)
        runs["c_in_process"] = run_in_process(bundle, args)
        print(f"{kind}: (a) batched", file=sys.stderr)
        runs["a_batched"] = run_normalcy(kind, bundle, images, 64, args)
        print(f"{kind}: (b) max_batch_size=1", file=sys.stderr)
        runs["b_unbatched"] = run_normalcy(kind, bundle, images, 1, args)
        if bentoml:
            print(f"{kind}: (d) BentoML", file=sys.stderr)
            runs["d_bentoml"] = run_bentoml(kind, bundle, images, args)
            same = np.isclose(
                runs["d_bentoml"]["first_score"], runs["a_batched"]["first_score"], rtol=1e-5
            )
            notes.append(
                f"{kind}: BentoML and normalcy scores of the same image "
                f"{'agree' if same else 'DIFFER'}"
            )
        flops = runs["flops_per_image"]
        if args.peak_tflops and flops:
            best = runs["a_batched"]["points"][-1]["images_per_s"]
            runs["gpu_fraction_of_peak"] = best * flops / (args.peak_tflops * 1e12)
        results["models"][kind] = runs
    summarize(results)
    stem = "serving_quick" if args.quick else "serving"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
