"""The models in service: one per bundle in the model folder, each with its own micro-batcher.

A new or changed bundle is read, opened in ONNX Runtime and warmed up off the event loop; only then
does it replace the old entry, in one dict assignment on the loop. Requests already queued finish on
the old model (its batcher drains in the background). A bundle that fails any step is refused,
logged and counted, and whatever served before keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detectors import Detector, ScoreResult
from detectors.bundle import Bundle
from detectors.drift import DriftMonitor
from detectors.errors import InputError

from .batcher import Arrival, BatchStats, MicroBatcher, Rejected
from .errors import ApiError
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)
Signature = tuple[int, int]  # (mtime_ns, size): cheap change detection before hashing


@dataclass
class ModelEntry:
    """A loaded, warmed-up detector and the batcher that feeds it."""

    name: str
    path: Path
    signature: Signature
    detector: Detector
    batcher: MicroBatcher
    drift: DriftMonitor
    metrics: Metrics
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.detector.version

    @property
    def has_heatmap(self) -> bool:
        return bool(self.detector.metadata.get("heatmap"))

    @property
    def heatmap_units(self) -> str | None:
        heat = self.detector.metadata.get("heatmap") or {}
        if not heat:
            return None
        return "z-score" if heat.get("mean") and heat.get("std") else "bits"

    def threshold(self, score: str, alpha: float) -> float | None:
        """The decision threshold, or None when no score can reach p <= alpha (small reference)."""
        value = self.detector.threshold(score, alpha)
        return value if np.isfinite(value) else None

    async def score(
        self,
        images: np.ndarray,
        *,
        score: str | None = None,
        alpha: float | None = None,
        heatmap: bool = False,
        arrival: Arrival | None = None,
        labels=None,
    ) -> ScoreResult:
        """Score images through the micro-batcher; ApiError for what the caller got wrong, Rejected
        when the batcher cannot take the work. A conditional model needs one label per image."""
        detector = self.detector
        name = detector.default_score if score is None else score
        if name not in detector.score_names:
            msg = f"unknown score {name!r}; model {self.name!r} offers {detector.score_names}"
            raise ApiError(400, "unknown_score", msg)
        alpha = detector.default_alpha if alpha is None else alpha
        if not 0.0 < alpha < 1.0:
            raise ApiError(400, "invalid_alpha", f"alpha must be in (0, 1), got {alpha}")
        if heatmap and not self.has_heatmap:
            raise ApiError(
                400, "heatmap_unavailable", f"model {self.name!r} has no heat-map output"
            )
        batch = detector.check_images(images)
        try:
            labels = detector.check_labels(labels, len(batch))
        except InputError as error:
            raise ApiError(400, "invalid_labels", str(error)) from None
        # Raises Rejected when the batcher cannot take the work.
        futures = self.batcher.submit(batch, (name, heatmap), arrival, labels)
        parts = await asyncio.gather(*futures)
        scores = np.concatenate([p["scores"] for p in parts])
        p_values = np.concatenate([p["p_values"] for p in parts])
        heat = np.concatenate([p["heatmap"] for p in parts]) if heatmap else None
        mapped = parts[0]["probability"] is not None  # the bundle maps this score to P(anomaly)
        probability = np.concatenate([p["probability"] for p in parts]) if mapped else None
        is_anomaly = p_values <= alpha
        self._observe(name, scores, p_values, is_anomaly)
        threshold = detector.threshold(name, alpha)
        return ScoreResult(
            name, alpha, threshold, scores, p_values, is_anomaly, heat, probability=probability
        )

    def _observe(
        self, score_name: str, scores: np.ndarray, p_values: np.ndarray, is_anomaly: np.ndarray
    ) -> None:
        m, model = self.metrics, self.name
        m.images_scored.labels(model).inc(len(scores))
        m.anomalies.labels(model).inc(int(is_anomaly.sum()))
        score_hist, p_hist = m.score.labels(model, score_name), m.p_value.labels(model)
        for value in scores.tolist():
            score_hist.observe(value)
        for value in p_values.tolist():
            p_hist.observe(value)
        self.drift.update(p_values)

    def update_drift_metrics(self) -> None:
        status = self.drift.status()
        if status is not None:
            self.metrics.drift_statistic.labels(self.name).set(status.statistic)
            self.metrics.drift_p_value.labels(self.name).set(status.p_value)

    def describe(self, *, full: bool = False) -> dict:
        """What GET /v1/models says about this model (`full` adds scores, training, histograms)."""
        d = self.detector
        meta = d.metadata
        channels, height, width = d.input_shape
        summary = {
            "name": self.name,
            "version": self.version,
            "sha256": d.bundle.sha256,
            "kind": d.kind,
            "provider": d.provider,
            "input": {**meta["input"], "shape": [channels, height, width]},
            "default_score": d.default_score,
            "scores": d.score_names,
            "calibration": {
                "alpha": d.default_alpha,
                "n_reference": len(d.reference()),
                "threshold": self.threshold(d.default_score, d.default_alpha),
                "data": meta["calibration"].get("data"),
            },
            "heatmap": self.has_heatmap,
            "conditional": d.conditional,
            "labels": meta.get("labels"),
            "loaded_at": self.loaded_at,
        }
        if not full:
            return summary
        scores = {}
        for name in d.score_names:
            spec = meta["scores"][name]
            reference = d.reference(name)
            counts, edges = np.histogram(reference, bins=min(30, max(1, len(reference) // 5)))
            scores[name] = {
                **{k: v for k, v in spec.items() if k != "reference"},
                "reference_size": len(reference),
                "threshold": self.threshold(name, d.default_alpha),
                "reference_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            }
        summary.update(
            scores=scores,
            preprocessing=meta["preprocessing"],
            model=meta["model"],
            training=meta.get("training", {}),
            heatmap_units=self.heatmap_units,
            batching={
                "max_batch_size": self.batcher.max_batch_size,
                "max_wait_ms": self.batcher.max_wait_s * 1000.0,
                "queue_capacity": self.batcher.capacity,
            },
        )
        return summary


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
        self.entries: dict[str, ModelEntry] = {}
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

    def get(self, name: str) -> ModelEntry:
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
        self, entry: ModelEntry, images: np.ndarray, **options
    ) -> tuple[ScoreResult, ModelEntry]:
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
                result = detector.score(
                    blank, labels=labels, heatmap=bool(detector.metadata.get("heatmap"))
                )
                if not (np.all(result.p_values > 0) and np.all(result.p_values <= 1)):
                    msg = "warm-up produced p-values outside (0, 1]"
                    raise ValueError(msg)
        return detector

    def _swap(self, name: str, path: Path, sig: Signature, detector: Detector) -> None:
        s, m = self.settings, self.metrics

        def infer(key, images, labels=None):
            score, heatmap = key
            result = detector.score(images, labels=labels, score=score, heatmap=heatmap)
            return {
                "scores": result.scores,
                "p_values": result.p_values,
                "heatmap": result.heatmap,
                "probability": result.probability,
            }

        batcher = MicroBatcher(
            infer,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            capacity=s.max_queue_images,
            name=name,
            on_inference=lambda st: _observe_batch(m, name, st),
            on_depth=m.queue_depth.labels(name).set,
        )
        entry = ModelEntry(
            name,
            path,
            sig,
            detector,
            batcher,
            DriftMonitor(
                s.drift_window, s.drift_min_samples, reference_size=len(detector.reference())
            ),
            m,
        )
        old = self.entries.get(name)
        self.entries[name] = entry  # the atomic swap: new requests see the new model from here on
        m.model_loaded(
            name,
            version=entry.version,
            kind=detector.kind,
            provider=detector.provider,
            alpha=detector.default_alpha,
            capacity=s.max_queue_images,
        )
        log.info(
            "serving model %r version %s (%s) from %s on %s, %d thread(s)%s",
            name,
            entry.version,
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

    def _drain(self, entry: ModelEntry) -> None:
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


def _observe_batch(metrics: Metrics, name: str, stats: BatchStats) -> None:
    metrics.inference_duration.labels(name).observe(stats.seconds)
    metrics.batch_size.labels(name).observe(stats.images)
