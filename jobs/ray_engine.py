"""The Ray engine of `normalcy score`: the same `load_chunk` and `score_batch` as the local engine,
run as Ray Data tasks (reading and decoding) and actors (one ONNX Runtime session each). It knows
nothing of the job around it (score.py): the job hands it chunks, options and where to put rows.

    listing (JSON chunks the driver writes) --read_text--> map_batches(load_lines): read, decode
    --> map_batches(Scorer actors, one GPU each where the cluster has GPUs) --> driver --> journal

The driver lists the inputs once (the same InputSet as the local engine, so both see the same items
in the same order and resume the same way) and receives only the small scored rows. Reading inside
Ray tasks rather than with `read_binary_files` keeps an unreadable file a row with an error: Ray's
readers fail the whole dataset on one bad file, and do not know `.npy` rows or IDX files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.bundle import Bundle
from detectors.detector import Detector
from detectors.errors import InputError
from detectors.images import InputSpec

from .inputs import Chunk, load_chunk
from .scoring import OnBatch, score_batch

CHUNKS_PER_PART = 4  # listing lines per file; each file is one read-and-decode task
DECODE_CPUS = 0.5
# Ray puts Unix sockets under its temporary directory; their paths must stay under 108 bytes.
MAX_TEMP_DIR_CHARS = 45


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # the cluster to join (default: start a local Ray)
    actors: int | None = None  # scoring actors (default: one per GPU, else one)
    cpus: int | None = None  # CPUs of a local Ray started here (default: all)
    batch_size: int = 256
    device: str = "auto"


def load_lines(
    batch: dict[str, np.ndarray], spec: InputSpec, labelled: bool
) -> dict[str, np.ndarray]:
    """Ray task: listing lines (JSON chunks) -> decoded columns, as `load_chunk` gives them."""
    parts = [
        load_chunk(Chunk.from_json(json.loads(line)), spec, labelled=labelled)
        for line in batch["text"]
    ]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


class Scorer:
    """Ray actor: one ONNX Runtime session, scoring batches with the engines' shared function."""

    def __init__(self, model_bytes: bytes, score: str, device: str, batch_size: int):
        self.detector = Detector(Bundle.from_bytes(model_bytes), device=device)
        self.score = score
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return score_batch(self.detector, batch, self.score, pad_to=self.batch_size)


def write_listing(chunks: Iterator[Chunk], directory: Path) -> int:
    """Write the chunks still to score as JSON lines, CHUNKS_PER_PART a file; return the count."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    count, lines = 0, []

    def flush() -> None:
        (directory / f"part-{count // CHUNKS_PER_PART:08d}.jsonl").write_text("".join(lines))

    for chunk in chunks:
        lines.append(json.dumps(chunk.to_json()) + "\n")
        if len(lines) == CHUNKS_PER_PART:
            flush()
            lines = []
        count += 1
    if lines:
        flush()
    return count


def ray_temp_dir(work: Path) -> tuple[str, Path | None]:
    """Ray's temporary directory inside the job's work area; a short link to it when the real
    path is too long for Ray's sockets. Returns (path for ray.init, link to remove afterwards)."""
    target = work / "ray"
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= MAX_TEMP_DIR_CHARS:
        return str(target), None
    tag = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    link = Path(tempfile.gettempdir()) / f"normalcy-ray-{tag}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return str(link), link


def run_ray(
    options: RayOptions,
    chunks: Iterator[Chunk],
    bundle: Bundle,
    score: str,
    work: Path,
    on_batch: OnBatch,
    should_stop: Callable[[], bool],
) -> dict:
    """Score `chunks` on Ray (the cluster at options.address, else a local Ray) into on_batch."""
    try:
        import ray
    except ImportError:
        msg = "the Ray engine needs Ray: pip install 'normalcy[ray]'"
        raise InputError(msg) from None
    listing = work / "ray-listing"
    if write_listing(chunks, listing) == 0:
        return {}
    started_here, link = False, None
    clock = time.monotonic()
    if not ray.is_initialized():
        settings = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if options.address:
            ray.init(address=options.address, **settings)
        else:
            temp_dir, link = ray_temp_dir(work)
            ray.init(num_cpus=options.cpus, _temp_dir=temp_dir, **settings)
        started_here = True
    start_seconds = time.monotonic() - clock
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = options.actors or max(gpus, 1)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # input order, like the local engine
        context.enable_progress_bars = False  # the job has its own
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        # Reading and decoding ask for half a CPU: they fuse into one task with each other but not
        # into the scoring actors (which ask for a whole one), so decoding overlaps scoring.
        dataset = (
            ray.data.read_text(str(listing), num_cpus=DECODE_CPUS)
            .map_batches(
                load_lines,
                batch_size=None,
                fn_kwargs={"spec": InputSpec.of(bundle.spec), "labelled": bool(bundle.spec.labels)},
                num_cpus=DECODE_CPUS,
            )
            .map_batches(
                Scorer,
                batch_size=options.batch_size,
                compute=ray.data.ActorPoolStrategy(size=actors),
                fn_constructor_kwargs={
                    "model_bytes": bundle.model_bytes,
                    "score": score,
                    "device": options.device,
                    "batch_size": options.batch_size,
                },
                num_gpus=1 if gpus else 0,
                num_cpus=1,
            )
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            on_batch(batch)
            if should_stop():
                break
    finally:
        if started_here:
            ray.shutdown()
        if link is not None:
            link.unlink(missing_ok=True)
        shutil.rmtree(listing, ignore_errors=True)
    return {
        "ray_start_seconds": round(start_seconds, 3),
        "ray_actors": actors,
        "ray_address": options.address or "local",
    }
