"""`normalcy score`: a batch job scoring folders, globs, `.npy` and IDX files into CSV, JSONL or
Parquet.

    inputs --(InputSet: stream of items)--> chunks --(load_chunk: read + decode, in parallel)-->
    image batches --(score_batch: ONNX Runtime + conformal p-values)--> journal --> RESULTS

The local engine (here) decodes in worker processes while the main process scores; the Ray engine
(ray_engine.py) runs the same `load_chunk` and `score_batch` (scoring.py) as Ray Data tasks and
actors. Both append to the same journal, which makes every job resumable (see results.py).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detectors.bundle import Bundle
from detectors.calibration import check_alpha
from detectors.detector import Detector
from detectors.errors import BundleError, InputError
from detectors.images import InputSpec

from .inputs import Chunk, InputSet, load_chunk
from .results import Journal, results_format, rows_from_batch, write_results
from .scoring import OnBatch, score_batch

ENGINES = ("local", "ray")
PR_SET_PDEATHSIG = 1  # prctl option: a signal for this process when its parent dies


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


# --- the local engine -----------------------------------------------------------------------------
def _decoder_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A main process killed with SIGKILL cannot stop its decoders: have the kernel do it (Linux).
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _nothing() -> None:
    pass


def decoder_pool(workers: int) -> Executor:
    """`workers` decoding processes (a thread for 0), started at once.

    Call it before ONNX Runtime or tqdm start threads: the workers are forked (no second import of
    everything, pages shared with this process), and forking a process whose other threads may hold
    locks is what makes fork unsafe."""
    if workers <= 0:
        return ThreadPoolExecutor(1)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_decoder_init,
        initargs=(os.getpid(),),
    )
    pool.submit(_nothing).result()  # with fork, the first task starts every worker
    return pool


def run_local(
    pool: Executor,
    chunks: Iterator[Chunk],
    detector: Detector,
    score: str,
    batch_size: int,
    on_batch: OnBatch,
    should_stop: Callable[[], bool],
) -> None:
    """Decode chunks in `pool` while this process scores them, in input order."""
    in_flight = 2 * getattr(pool, "_max_workers", 1) + 1  # keeps decoders busy; bounds memory
    labelled = detector.conditional
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(load_chunk, chunk, detector.input_spec, labelled=labelled))
            if len(pending) >= in_flight:
                decoded = pending.popleft().result()
                on_batch(score_batch(detector, decoded, score, pad_to=batch_size))
                if should_stop():
                    return
        while pending:
            decoded = pending.popleft().result()
            on_batch(score_batch(detector, decoded, score, pad_to=batch_size))
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
            tqdm.write("stopping after this batch (Ctrl-C again to abort)", file=sys.stderr)

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
        inputs.append(
            f"{kind}:{os.path.abspath(rest)}"
            if kind in ("folder", "npy", "idx") and rest
            else os.path.abspath(spec)
        )
    return {"bundle_sha256": bundle.sha256, "score": score, "inputs": inputs}


def _work_area(job: ScoreJob, out: Path, identity: dict) -> Path:
    work = out.absolute().with_name(out.name + ".work")
    journal = work / "journal.jsonl"
    if journal.exists() and journal.stat().st_size > 0:
        if not job.resume:
            msg = (
                f"{work} holds the results of an interrupted job: add --resume to continue it, "
                "or delete that folder to start again"
            )
            raise InputError(msg)
        try:
            stored = json.loads((work / "job.json").read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored != identity:
            msg = (
                f"{work} belongs to another job (bundle, score or inputs differ); resume with "
                "the same ones, or delete that folder to start again"
            )
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
    score = bundle.spec.score_name(job.score)
    alpha = bundle.spec.calibration.alpha if job.alpha is None else check_alpha(job.alpha)
    spec = InputSpec.of(bundle.spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = _identity(job, bundle, score)
    work = _work_area(job, out, identity)
    inputs = InputSet(job.inputs, spec, work)
    total = inputs.count()
    if total == 0:
        msg = f"found no images in {', '.join(job.inputs)}"
        raise InputError(msg)

    journal = Journal(work / "journal.jsonl")
    counts = {"this_run": 0, "errors": 0}
    extra: dict = {}
    stop = _Stop()
    with ExitStack() as stack:
        # The decoders first: they are forked before ONNX Runtime and tqdm start threads.
        pool = stack.enter_context(decoder_pool(job.workers)) if job.engine == "local" else None
        done, n_done = journal.open()
        stack.callback(journal.close)
        items = inputs.items() if not done else (i for i in inputs.items() if i not in done)
        chunks = inputs.chunks(items, job.batch_size)
        bar = stack.enter_context(
            tqdm(
                total=total,
                initial=n_done,
                unit="img",
                desc="scoring",
                disable=not job.progress,
                smoothing=0.05,
                dynamic_ncols=True,
            )
        )

        def on_batch(batch: dict[str, np.ndarray]) -> None:
            rows = rows_from_batch(batch)
            journal.append(rows)
            counts["this_run"] += len(rows)
            counts["errors"] += sum(row["error"] is not None for row in rows)
            bar.update(len(rows))
            bar.set_postfix(errors=counts["errors"], refresh=False)

        stack.enter_context(stop.installed())
        if pool is None:
            from .ray_engine import RayOptions, run_ray

            options = RayOptions(
                address=job.ray_address,
                actors=job.ray_actors,
                cpus=job.ray_cpus,
                batch_size=job.batch_size,
                device=job.device,
            )
            extra = run_ray(options, chunks, bundle, score, work, on_batch, stop)
        else:
            detector = Detector(bundle, device=job.device)
            run_local(pool, chunks, detector, score, job.batch_size, on_batch, stop)
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
