"""The model registry: one ServedModel per bundle in the model folder.

The folder is scanned (on start, on `reload`, and by a watcher); a new or changed bundle is read,
opened in ONNX Runtime and warmed up off the event loop, and only then replaces the old model, in
one dict assignment on the loop (the atomic swap). Requests already queued finish on the old model:
its batcher drains in the background. A bundle that fails any step is refused, logged and counted,
and whatever served before keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectors import Detector, ScoreResult
from detectors.bundle import Bundle

from .batcher import Rejected
from .errors import ApiError
from .metrics import Metrics, score_buckets
from .model import ServedModel, Signature
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class ModelRegistry:
    """Serves every FILE.onnx in the model folder as model FILE; swaps new versions in."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.folder = Path(settings.models_dir)
        self.entries: dict[str, ServedModel] = {}
        self.started = False
        self.shutting_down = False
        self._failed: dict[str, Signature] = {}  # refused files, not retried until they change
        self._last_poll: dict[str, Signature] = {}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._draining: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return self.started and not self.shutting_down and bool(self.entries)

    def get(self, name: str) -> ServedModel:
        entry = self.entries.get(name)
        if entry is None:
            msg = f"unknown model {name!r}; serving {sorted(self.entries)}"
            raise ApiError(404, "unknown_model", msg)
        return entry

    async def start(self) -> None:
        report = await self.reload()
        if not self.entries:
            log.warning(
                "no model serves from %s (refused: %s); not ready until one loads",
                self.folder,
                report.failed or "none",
            )
        if self.settings.watch_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch(), name="model-watcher"
            )
        self.started = True

    async def close(self) -> None:
        """Refuse new work and drain every batcher (requests in flight finish)."""
        self.shutting_down = True
        if self._watcher is not None:
            self._watcher.cancel()
        timeout = self.settings.shutdown_timeout_s
        await asyncio.gather(
            *(e.batcher.close(timeout) for e in self.entries.values()), *self._draining
        )

    async def score(
        self, entry: ServedModel, images: np.ndarray, **options
    ) -> tuple[ScoreResult, ServedModel]:
        """Score on `entry`, or on its successor if a hot swap closed it after the request began.

        Returns the result and the entry that produced it (its version goes in the answer).
        """
        while True:
            try:
                return await entry.score(images, **options), entry
            except Rejected as rejected:
                current = self.entries.get(entry.name)
                swapped = rejected.reason == "shutting_down" and not self.shutting_down
                if swapped and current is not None and current is not entry:
                    entry = current
                    continue
                self.metrics.rejected.labels(entry.name, rejected.reason).inc()
                status = 429 if rejected.reason == "queue_full" else 503
                raise ApiError(
                    status, rejected.reason, str(rejected), {"Retry-After": "1"}
                ) from None

    # --- reloading ---------------------------------------------------------------------------
    def _scan(self) -> dict[str, tuple[Path, Signature]]:
        found = {}
        for path in sorted(self.folder.glob("*.onnx")):
            if path.name.startswith("."):  # editors' and write_bundle's temporary files
                continue
            try:
                stat = path.stat()
            except OSError:
                continue  # vanished between glob and stat
            found[path.stem] = (path, (stat.st_mtime_ns, stat.st_size))
        return found

    async def reload(self, *, retry_failed: bool = True, stable_only: bool = False) -> ReloadReport:
        """Bring the served models in line with the folder; `stable_only` (the watcher) acts only
        on files unchanged since the previous poll, so a half-copied file is not read."""
        async with self._lock:
            report = ReloadReport()
            if not self.folder.is_dir():  # unmounted or moved: keep serving what is loaded
                log.warning("model folder %s is missing; keeping the models loaded", self.folder)
                return report
            found = self._scan()
            seen_before, self._last_poll = (
                self._last_poll,
                {n: sig for n, (_, sig) in found.items()},
            )
            for name, (path, sig) in found.items():
                entry = self.entries.get(name)
                if entry is not None and entry.signature == sig:
                    report.unchanged.append(name)
                    continue
                if stable_only and seen_before.get(name) != sig:
                    continue
                if not retry_failed and self._failed.get(name) == sig:
                    continue
                await self._load(name, path, sig, report)
            for name in [n for n in self.entries if n not in found]:
                if stable_only and name in seen_before:
                    continue
                self._remove(name)
                report.removed.append(name)
            return report

    async def _load(self, name: str, path: Path, sig: Signature, report: ReloadReport) -> None:
        old = self.entries.get(name)
        try:
            bundle = await asyncio.to_thread(Bundle.read, path)
            if old is not None and bundle.sha256 == old.detector.bundle.sha256:
                old.signature = sig  # touched, same bytes: nothing to swap
                report.unchanged.append(name)
                return
            detector = await asyncio.to_thread(self._open, bundle)
        except Exception as error:  # BundleError, ONNX Runtime's own errors, a failed warm-up
            self._failed[name] = sig
            self.metrics.model_load_failures.labels(name).inc()
            message = str(error) or type(error).__name__
            log.error(
                "refused %s: %s%s",
                path,
                message,
                f" (still serving version {old.version})" if old else "",
            )
            report.failed[name] = message
            return
        self._failed.pop(name, None)
        self._swap(name, path, sig, detector)
        if old is not None:
            self.metrics.model_reloads.labels(name).inc()
        report.loaded.append(name)

    def _open(self, bundle: Bundle) -> Detector:
        """In a thread: open the session and warm it up on the shapes it will see."""
        detector = Detector(
            bundle, device=self.settings.device, threads=self.settings.inference_threads
        )
        if self.settings.warmup:
            channels, height, width = detector.input_shape
            for size in sorted({1, self.settings.max_batch_size}):
                blank = np.zeros((size, channels, height, width), np.uint8)
                labels = None if not detector.conditional else np.full(size, detector.classes[0])
                result = detector.score(blank, labels=labels, heatmap=detector.has_heatmap)
                if not (np.all(result.p_values > 0) and np.all(result.p_values <= 1)):
                    msg = "warm-up produced p-values outside (0, 1]"
                    raise ValueError(msg)
        return detector

    def _swap(self, name: str, path: Path, sig: Signature, detector: Detector) -> None:
        s, m = self.settings, self.metrics
        model = ServedModel(name, path, sig, detector, s, m)
        old = self.entries.get(name)
        self.entries[name] = model  # the atomic swap: new requests see the new model from here on
        m.model_loaded(
            name,
            version=model.version,
            kind=detector.kind,
            provider=detector.provider,
            alpha=detector.default_alpha,
            capacity=s.max_queue_images,
            score_buckets={
                score: score_buckets(detector.reference(score), model.threshold(score, None))
                for score in detector.score_names
            },
        )
        log.info(
            "serving model %r version %s (%s) from %s on %s, %d thread(s)%s",
            name,
            model.version,
            detector.kind,
            path,
            detector.provider,
            s.inference_threads,
            f", replacing {old.version}" if old else "",
        )
        if old is not None:
            self._drain(old)

    def _remove(self, name: str) -> None:
        entry = self.entries.pop(name)
        self._failed.pop(name, None)
        self.metrics.model_removed(name)
        log.info("model %r removed (its file is gone)", name)
        self._drain(entry)

    def _drain(self, entry: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(
            entry.batcher.close(self.settings.shutdown_timeout_s)
        )
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                await self.reload(retry_failed=False, stable_only=True)
            except Exception:  # the watcher must outlive a surprise (a folder gone, a full disk)
                log.exception("watching %s failed; trying again", self.folder)
