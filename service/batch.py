"""`normalcy score`: a batch job scoring folders, globs, `.npy` and IDX files into CSV, JSONL or
Parquet.

    inputs --(InputSet: stream of items)--> chunks --(load_chunk: read + decode, in parallel)-->
    image batches --(score_batch: ONNX Runtime + conformal p-values)--> journal --> RESULTS

The local engine decodes in worker processes while the main process scores; the Ray engine
(service.batch_ray) runs the same `load_chunk` and `score_batch` as Ray Data tasks and actors. Both
append to the same journal, which makes every job resumable (see service.batch_results).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detectors.bundle import Bundle
from detectors.calibration import check_alpha
from detectors.detector import Detector
from detectors.errors import BundleError, InputError

from .batch_inputs import Chunk, InputSet, InputSpec, load_chunk
from .batch_results import Journal, results_format, rows_from_batch, write_results

ENGINES = ("local", "ray")
OnBatch = Callable[[dict[str, np.ndarray]], None]


@dataclass
class ScoreJob:
    bundle: str
    inputs: list[str]
    out: str
    alpha: float | None = None  # default: the bundle's
    fdr: float | None = None  # decide by Benjamini-Hochberg q-values at this false discovery rate
    score: str | None = None  # default: the bundle's
    batch_size: int = 256
    workers: int = 2  # local engine: decoding processes (0: one thread)
    resume: bool = False
    engine: str = "local"
    device: str = "auto"
    ray_address: str | None = None
    ray_actors: int | None = None  # scoring actors (default: one per GPU, else one)
    ray_cpus: int | None = None  # CPUs of a local Ray started by the job (default: all)
    progress: bool = True


def score_batch(detector: Detector, batch: dict[str, np.ndarray], score: str | None = None
                ) -> dict[str, np.ndarray]:
    """The one scoring function of both engines: {input, index, image, error} -> {input, index,
    score, p_value, error}. Rows with an error are not scored; their score and p_value are NaN."""
    errors = np.array([str(e) for e in batch["error"]], dtype=object)
    images = np.asarray(batch["image"])
    ok = errors == ""
    scores = np.full(len(errors), np.nan)
    p_values = np.full(len(errors), np.nan)
    if ok.any():
        try:
            result = detector.score(images[ok], score=score)
            scores[ok], p_values[ok] = result.scores, result.p_values
        except InputError:
            # One image the model cannot score (a non-finite output) must not cost the batch.
            for i in np.flatnonzero(ok):
                try:
                    result = detector.score(images[i:i + 1], score=score)
                    scores[i], p_values[i] = result.scores[0], result.p_values[0]
                except InputError as error:
                    errors[i] = f"{batch['input'][i]}: {error}"
    return {"input": np.asarray(batch["input"], dtype=object), "index": np.asarray(batch["index"]),
            "score": scores, "p_value": p_values, "error": errors}


# --- the local engine -----------------------------------------------------------------------------
def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; only the main process decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decoder_pool(workers: int) -> Executor:
    if workers <= 0:
        return ThreadPoolExecutor(1)
    # forkserver: workers never inherit ONNX Runtime's threads, and import the decoders only once.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["service.batch_inputs"])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)


def run_local(chunks: Iterator[Chunk], spec: InputSpec, detector: Detector, score: str,
              workers: int, on_batch: OnBatch, should_stop: Callable[[], bool]) -> None:
    """Decode chunks in `workers` processes while this process scores them, in input order."""
    in_flight = 2 * max(workers, 1) + 1  # enough to keep decoders busy; bounds memory
    pending: deque = deque()
    with _decoder_pool(workers) as pool:
        try:
            for chunk in chunks:
                pending.append(pool.submit(load_chunk, chunk, spec))
                if len(pending) >= in_flight:
                    on_batch(score_batch(detector, pending.popleft().result(), score))
                    if should_stop():
                        return
            while pending:
                on_batch(score_batch(detector, pending.popleft().result(), score))
                if should_stop():
                    return
        finally:
            for future in pending:
                future.cancel()


# --- the job --------------------------------------------------------------------------------------
class _Stop:
    """First Ctrl-C: finish the batch in hand, then stop and keep what was scored. Second: abort."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            tqdm.write("stopping after this batch (Ctrl-C again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _identity(job: ScoreJob, bundle: Bundle, score: str) -> dict:
    """What must not change between a job and its resumption."""
    inputs = []
    for spec in job.inputs:
        kind, _, rest = spec.partition(":")
        inputs.append(f"{kind}:{os.path.abspath(rest)}" if kind in ("folder", "npy", "idx") and rest
                      else os.path.abspath(spec))
    return {"bundle_sha256": bundle.sha256, "score": score, "inputs": inputs}


def _work_area(job: ScoreJob, out: Path, identity: dict) -> Path:
    work = out.absolute().with_name(out.name + ".work")
    journal = work / "journal.jsonl"
    if journal.exists() and journal.stat().st_size > 0:
        if not job.resume:
            msg = (f"{work} holds the results of an interrupted job: add --resume to continue it, "
                   "or delete that folder to start again")
            raise InputError(msg)
        try:
            stored = json.loads((work / "job.json").read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored != identity:
            msg = (f"{work} belongs to another job (bundle, score or inputs differ); resume with "
                   "the same ones, or delete that folder to start again")
            raise InputError(msg)
        return work
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / ".job.json.tmp"
    tmp.write_text(json.dumps(identity, indent=2))
    tmp.replace(work / "job.json")
    return work


def _check_job(job: ScoreJob) -> None:
    if job.engine not in ENGINES:
        msg = f"engine must be one of {ENGINES}, got {job.engine!r}"
        raise InputError(msg)
    if job.batch_size < 1:
        msg = f"batch size must be at least 1, got {job.batch_size}"
        raise InputError(msg)
    if job.fdr is not None:
        check_alpha(job.fdr)
    if not job.inputs:
        msg = "no inputs given"
        raise InputError(msg)


def run(job: ScoreJob) -> dict:
    """Score every input of `job` into its RESULTS file; return the summary (even if stopped)."""
    started = time.monotonic()
    _check_job(job)
    out = Path(job.out)
    results_format(out)
    bundle = Bundle.read(job.bundle)
    if not bundle.is_calibrated():
        msg = f"{job.bundle} has no calibration reference; run `normalcy calibrate` first"
        raise BundleError(msg)
    score = job.score or bundle.metadata["default_score"]
    if score not in bundle.score_names():
        msg = f"unknown score {score!r}; this bundle offers {bundle.score_names()}"
        raise InputError(msg)
    alpha = check_alpha(bundle.metadata["calibration"]["alpha"] if job.alpha is None else job.alpha)
    spec = InputSpec.from_metadata(bundle.metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = _identity(job, bundle, score)
    work = _work_area(job, out, identity)
    inputs = InputSet(job.inputs, spec, work)
    total = inputs.count()
    if total == 0:
        msg = f"found no images in {', '.join(job.inputs)}"
        raise InputError(msg)

    journal = Journal(work / "journal.jsonl")
    done, n_done = journal.open()
    items = inputs.items() if not done else (item for item in inputs.items() if item not in done)
    chunks = inputs.chunks(items, job.batch_size)
    bar = tqdm(total=total, initial=n_done, unit="img", desc="scoring", disable=not job.progress,
               smoothing=0.05, dynamic_ncols=True)
    counts = {"this_run": 0, "errors": 0}
    extra: dict = {}

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        rows = rows_from_batch(batch)
        journal.append(rows)
        counts["this_run"] += len(rows)
        counts["errors"] += sum(row["error"] is not None for row in rows)
        bar.update(len(rows))
        bar.set_postfix(errors=counts["errors"], refresh=False)

    stop = _Stop()
    try:
        with stop.installed():
            if job.engine == "ray":
                from .batch_ray import run_ray

                extra = run_ray(job, chunks, spec, bundle, score, work, on_batch, stop)
            else:
                detector = Detector(bundle, device=job.device)
                run_local(chunks, spec, detector, score, job.workers, on_batch, stop)
    finally:
        bar.close()
        journal.close()
    complete = not stop.requested
    metadata = {**identity, "bundle_version": bundle.version, "alpha": alpha, "fdr": job.fdr}
    totals = write_results(journal, out, alpha=alpha, fdr=job.fdr, metadata=metadata)
    if complete:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    return {
        "results": str(out),
        "complete": complete,
        "inputs": total,
        "rows": totals.rows,
        "scored": totals.scored,
        "anomalies": totals.anomalies,
        "errors": totals.errors,
        "processed_this_run": counts["this_run"],
        "seconds": round(seconds, 3),
        "images_per_second": round(counts["this_run"] / seconds, 1) if seconds > 0 else None,
        "engine": job.engine,
        "score": score,
        "rule": f"q_value <= {job.fdr}" if job.fdr is not None else f"p_value <= {alpha}",
        "bundle_version": bundle.version,
        **({} if complete else {"work_area": str(work), "resume": "run again with --resume"}),
        **extra,
    }

