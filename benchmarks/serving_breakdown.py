"""Where a request's time goes in `normalcy serve` at one concurrency (default 64), on CPU.

    python benchmarks/serving_breakdown.py --bundle vae=PATH --bundle pixelcnn=PATH \
        [--concurrency 64] [--seconds 15]

For each bundle: `normalcy serve` (micro-batching, its defaults) under benchmarks/loadgen.py's
closed loop, one image per JSON request, as benchmarks/serving.py (a) runs it. The server's own
Prometheus histograms then say, summed over the run: time in requests (middleware to response),
time in inference calls and images per call. Afterwards, with the server stopped, the same process
times the non-inference steps one request at a time, on one core: parsing and decoding the JSON
body (service.requests.from_json), building and serialising the answer (api_v1.score_answer).

Per image, at that concurrency:
  wall           1 / images per second (what a client sees as throughput)
  inference      inference seconds / images (the critical path: one batch at a time)
  decode, answer the single-request timings above (event-loop work, on the GIL)
  rest           wall - inference - decode - answer: HTTP, routing, the batcher, metrics, and
                 the CPU the load generator itself takes on this machine
and per request: queueing = mean request time - mean inference call - decode - answer; and the
server's CPU per image, from /proc: its main thread (the event loop: HTTP, parsing, answers,
metrics) and its other threads (the batcher's inference thread and ONNX Runtime's pool).
Figures, not tests; timings on a shared machine move with its load, which is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
from serving import WORK, Server, bodies, free_port, request_images, serve_command  # noqa: E402

METRICS = {
    "request": "normalcy_request_duration_seconds",
    "inference": "normalcy_inference_duration_seconds",
    "batch": "normalcy_batch_size",
}


def scrape(port: int) -> dict[str, float]:
    """Sum and count of each histogram of METRICS, summed over its label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    totals = {f"{key}_{part}": 0.0 for key in METRICS for part in ("sum", "count")}
    for line in text.splitlines():
        for key, name in METRICS.items():
            for part in ("sum", "count"):
                if line.startswith(f"{name}_{part}"):
                    totals[f"{key}_{part}"] += float(line.rsplit(" ", 1)[1])
    return totals


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process's main thread (the event loop: HTTP, parsing,
    answers, metrics) and of all its other threads (the batcher's and ONNX Runtime's)."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {"event_loop": 0.0, "other_threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        totals["event_loop" if int(task.name) == pid else "other_threads"] += seconds
    return totals


def per_call_ms(fn, seconds: float = 2.0) -> float:
    fn()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return 1000 * (time.perf_counter() - started) / calls


def host_steps_ms(bundle: Path, images) -> dict[str, float]:
    """One request's parse + decode and answer, timed in this process (the server stopped)."""
    from detectors import Detector
    from service.api_v1 import score_answer
    from service.requests import Limits, from_json

    detector = Detector.load(bundle, device="cpu")
    body = json.dumps({"images": [images[0].tolist()]}).encode()
    limits = Limits(max_pixels=10**7, max_images=64)
    result = detector.score(images[:1])

    class Served:  # what score_answer reads of a ServedModel
        name, version, heatmap_units = "m", detector.version, None

    return {
        "decode_ms": per_call_ms(lambda: from_json(body, detector.input_spec, limits)),
        "answer_ms": per_call_ms(lambda: json.dumps(score_answer(Served, result, [None])).encode()),
    }


def measure(kind: str, bundle: Path, args) -> dict:
    images = request_images(bundle, quick=False)
    folder = WORK / "breakdown-models" / kind
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / f"{kind}.onnx"
    link.unlink(missing_ok=True)
    link.symlink_to(bundle.resolve())
    port = free_port()
    server = Server(
        serve_command(folder, port, "cpu", args.max_batch_size),
        f"http://127.0.0.1:{port}/v2/health/ready",
        log=WORK / f"breakdown-{kind}.log",
    )
    try:
        requests = bodies(images, "127.0.0.1", port, f"/v1/models/{kind}/score")
        loadgen.run("127.0.0.1", port, requests, args.concurrency, args.warmup, 0)  # warm-up
        before, cpu_before = scrape(port), thread_cpu_s(server.process.pid)
        load = loadgen.run("127.0.0.1", port, requests, args.concurrency, args.seconds, 0)
        after, cpu_after = scrape(port), thread_cpu_s(server.process.pid)
    finally:
        server.stop()
    served = {key: after[key] - before[key] for key in after}
    point = load.summary()
    steps = host_steps_ms(bundle, images)
    n_images = served["batch_sum"]
    wall_ms = 1000 / point["images_per_s"]
    inference_ms = 1000 * served["inference_sum"] / n_images
    rest_ms = wall_ms - inference_ms - steps["decode_ms"] - steps["answer_ms"]
    request_ms = 1000 * served["request_sum"] / served["request_count"]
    call_ms = 1000 * served["inference_sum"] / served["inference_count"]
    return {
        "kind": kind,
        "bundle": str(bundle),
        "concurrency": args.concurrency,
        "load": point,
        "server": served,
        "per_image_ms": {
            "wall": wall_ms,
            "inference": inference_ms,
            **{k.removesuffix("_ms"): v for k, v in steps.items()},
            "rest": rest_ms,
        },
        "server_cpu_ms_per_image": {
            key: 1000 * (cpu_after[key] - cpu_before[key]) / n_images for key in cpu_after
        },
        "mean_batch_images": n_images / served["inference_count"],
        "per_request_ms": {
            "server_time": request_ms,
            "inference_call": call_ms,
            "queueing": request_ms - call_ms - steps["decode_ms"] - steps["answer_ms"],
        },
    }


def table(runs: list[dict], results: dict) -> str:
    lines = [
        f"Where the time goes at concurrency {runs[0]['concurrency']} (ms; "
        f"{results['cpus']} CPUs; 1-minute load average {results['load_average_at_start'][0]:.1f} "
        f"at the start, {results['load_average_at_end'][0]:.1f} at the end)",
        "",
        "| model | images/s | per image: wall | inference | decode | answer | rest | mean batch "
        "| per request: server time | inference call | queueing "
        "| server CPU per image: event loop | other threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        image, request = run["per_image_ms"], run["per_request_ms"]
        cpu = run["server_cpu_ms_per_image"]
        lines.append(
            f"| {run['kind']} | {run['load']['images_per_s']:.0f} | {image['wall']:.2f} | "
            f"{image['inference']:.2f} | {image['decode']:.3f} | {image['answer']:.3f} | "
            f"{image['rest']:.2f} | {run['mean_batch_images']:.1f} | "
            f"{request['server_time']:.0f} | {request['inference_call']:.0f} | "
            f"{request['queueing']:.0f} | {cpu['event_loop']:.2f} | {cpu['other_threads']:.2f} |"
        )
    return "\n".join([*lines, "", f"`{results['command']}`"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", action="append", required=True, help="KIND=PATH")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="serving_breakdown")
    args = parser.parse_args()
    from common import write_results

    WORK.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    runs = []
    for item in args.bundle:
        kind, path = item.split("=", 1)
        runs.append(measure(kind, Path(path), args))
    results["load_average_at_end"] = os.getloadavg()
    results["runs"] = runs
    write_results(args.out, args.name, results, table(runs, results))


if __name__ == "__main__":
    main()
