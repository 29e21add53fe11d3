"""A model in service: one loaded, warmed-up detector, the micro-batcher that feeds it, and the
metrics and drift window its answers update.

The serving lifecycle is named methods: `score` checks a request once (score name, alpha, heat
map, images, labels) and submits its images; `execute` is the micro-batcher's callback, scoring one
batch of already-checked images into a ScoreResult that is sliced back to the requests.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from detectors import Detector, ScoreResult
from detectors.calibration import check_alpha
from detectors.drift import DriftMonitor
from detectors.errors import InputError
from detectors.histogram import HistogramLimits, robust_limits

from .batcher import Arrival, BatchStats, MicroBatcher
from .errors import ApiError
from .metrics import Metrics
from .settings import Settings
from .statistics import ModelStatistics

Signature = tuple[int, int]  # (mtime_ns, size): cheap change detection before hashing


class ServedModel:
    """Serves one bundle as model `name`; must be created on the event loop (its batcher's task)."""

    def __init__(
        self,
        name: str,
        path: Path,
        signature: Signature,
        detector: Detector,
        settings: Settings,
        metrics: Metrics,
    ):
        self.name = name
        self.path = path
        self.signature = signature
        self.detector = detector
        self.metrics = metrics
        self.loaded_at = time.time()
        self.show_data_paths = settings.show_data_paths
        self.statistics = ModelStatistics()
        self.drift = DriftMonitor(
            settings.drift_window,
            settings.drift_min_samples,
            reference_size=len(detector.reference()),
        )
        self.batcher = MicroBatcher(
            self.execute,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            capacity=settings.max_queue_images,
            name=name,
            on_inference=self._observe_batch,
            on_depth=metrics.queue_depth.labels(name).set,
        )

    @property
    def version(self) -> str:
        return self.detector.version

    @property
    def has_heatmap(self) -> bool:
        return self.detector.has_heatmap

    @property
    def heatmap_units(self) -> str | None:
        heat = self.detector.spec.heatmap
        if heat is None:
            return None
        return "z-score" if heat.mean and heat.std else "bits"

    def threshold(self, score: str, alpha: float) -> float | None:
        """The decision threshold, or None when no score can reach p <= alpha (small reference)."""
        value = self.detector.threshold(score, alpha)
        return value if np.isfinite(value) else None

    # --- serving ---------------------------------------------------------------------------
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
        started = time.perf_counter()
        try:
            result = await self._score(images, score, alpha, heatmap, arrival, labels)
        except Exception:
            self.statistics.request_done(time.perf_counter() - started, images=0, ok=False)
            raise
        self.statistics.request_done(time.perf_counter() - started, images=len(result), ok=True)
        return result

    async def _score(
        self,
        images: np.ndarray,
        score: str | None,
        alpha: float | None,
        heatmap: bool,
        arrival: Arrival | None,
        labels,
    ) -> ScoreResult:
        detector = self.detector
        try:
            name = detector.score_name(score)
        except InputError as error:
            msg = f"{error} (model {self.name!r})"
            raise ApiError(400, "unknown_score", msg) from None
        try:
            alpha = None if alpha is None else check_alpha(alpha)
        except InputError as error:
            raise ApiError(400, "invalid_alpha", str(error)) from None
        if heatmap and not self.has_heatmap:
            raise ApiError(
                400, "heatmap_unavailable", f"model {self.name!r} has no heat-map output"
            )
        batch = detector.check_images(images)
        try:
            labels = detector.check_labels(labels, len(batch))
        except InputError as error:
            raise ApiError(400, "invalid_labels", str(error)) from None
        # Requests share a batch whatever their alpha: the batch is scored at the bundle's alpha,
        # and a request that asks for another has its part decided again at its own.
        futures = self.batcher.submit(batch, (name, heatmap), arrival, labels)  # or Rejected
        result = ScoreResult.concatenate(await asyncio.gather(*futures))
        if alpha is not None and alpha != result.alpha:
            result = result.decided_at(alpha, detector.threshold(name, alpha))
        self._observe(result)
        return result

    def execute(self, key: Hashable, images: np.ndarray, labels: np.ndarray | None) -> ScoreResult:
        """The micro-batcher's callback, in its worker thread: one batch of checked images (and
        labels) that asked for the same (score, heat map), scored at the bundle's alpha."""
        score, heatmap = key
        return self.detector.score_checked(images, labels, score, heatmap=heatmap)

    def _observe(self, result: ScoreResult) -> None:
        m, model = self.metrics, self.name
        m.images_scored.labels(model).inc(len(result))
        m.anomalies.labels(model).inc(int(result.is_anomaly.sum()))
        m.score.observe(model, result.score_name, result.scores)
        p_hist = m.p_value.labels(model)
        for value in result.p_values.tolist():
            p_hist.observe(value)
        self.drift.update(result.p_values)

    def _observe_batch(self, stats: BatchStats) -> None:
        self.statistics.batch_done(stats.seconds)
        self.metrics.inference_duration.labels(self.name).observe(stats.seconds)
        self.metrics.batch_size.labels(self.name).observe(stats.images)

    def update_drift_metrics(self) -> None:
        status = self.drift.status()
        if status is not None:
            self.metrics.drift_statistic.labels(self.name).set(status.statistic)
            self.metrics.drift_p_value.labels(self.name).set(status.p_value)

    # --- description -----------------------------------------------------------------------
    def describe(self, *, full: bool = False) -> dict:
        """What GET /v1/models says about this model (`full` adds scores, training, histograms)."""
        d = self.detector
        spec = d.spec
        summary = {
            "name": self.name,
            "version": self.version,
            "sha256": d.bundle.sha256,
            "kind": d.kind,
            "provider": d.provider,
            "input": {**spec.input.to_json(), "shape": list(spec.input.shape)},
            "default_score": d.default_score,
            "scores": d.score_names,
            "calibration": {
                "alpha": d.default_alpha,
                "n_reference": len(d.reference()),
                "threshold": self.threshold(d.default_score, d.default_alpha),
                "data": spec.calibration.data,
            },
            "heatmap": self.has_heatmap,
            "conditional": d.conditional,
            "labels": None if spec.labels is None else spec.labels.to_json(),
            "loaded_at": self.loaded_at,
        }
        if not full:
            return self._public(summary)
        scores = {}
        for name, score in spec.scores.items():
            reference = d.reference(name)
            threshold = self.threshold(name, d.default_alpha)
            summaries = {"reference", "member_references"}  # sizes here, not the numbers
            scores[name] = {
                **{k: v for k, v in score.to_json().items() if k not in summaries},
                "reference_size": len(reference),
                **(
                    {
                        "member_reference_sizes": {
                            m: len(r) for m, r in score.member_references.items()
                        }
                    }
                    if getattr(score, "member_references", None)
                    else {}
                ),
                "threshold": threshold,
                "reference_histogram": reference_histogram(reference, threshold),
            }
        summary.update(
            scores=scores,
            preprocessing=spec.preprocessing.to_json(),
            model=spec.model.to_json(),
            training=spec.training.to_json(),
            heatmap_units=self.heatmap_units,
            batching={
                "max_batch_size": self.batcher.max_batch_size,
                "max_wait_ms": self.batcher.max_wait_s * 1000.0,
                "queue_capacity": self.batcher.capacity,
            },
        )
        return self._public(summary)

    def _public(self, description: dict) -> dict:
        """Server-side folders stay on the server unless the operator says otherwise: the data
        that training and calibration name (the rest holds no paths, but units like bits/dim)."""
        if self.show_data_paths:
            return description
        sections = [key for key in ("calibration", "training") if key in description]
        return {**description, **{key: without_directories(description[key]) for key in sections}}


def reference_histogram(reference: np.ndarray, threshold: float | None) -> dict:
    """The calibration scores as the web page draws them: bins between robust limits (0.5th and
    99.5th percentile, widened to the threshold, which is always shown), the scores beyond a limit
    drawn in its edge bin and counted in `below` and `above`."""
    limits = robust_limits(reference)
    if threshold is not None:
        limits = HistogramLimits(min(limits.low, threshold), max(limits.high, threshold))
    counts, edges = np.histogram(
        limits.clip(reference), bins=limits.bins(min(30, max(1, len(reference) // 5)))
    )
    below, above = limits.outside(reference)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "below": below, "above": above}


_SOURCE = re.compile(r"^([A-Za-z][\w+.-]*:)?(.*)$")  # "idx:/data/x.gz" -> "idx:", "/data/x.gz"


def without_directories(value):
    """`value` (JSON) with every path-like word cut to its last part: "idx:/data/mnist/t10k.gz
    (calibration split)" -> "idx:t10k.gz (calibration split)". Sources name their data by file or
    folder; where that file lives on the server is nobody's business but the operator's."""
    if isinstance(value, dict):
        return {key: without_directories(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_directories(item) for item in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return " ".join(_last_part(word) for word in value.split(" "))
    return value


def _last_part(word: str) -> str:
    prefix, rest = _SOURCE.match(word).groups()
    if "/" not in rest and "\\" not in rest:
        return word
    name = rest.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return (prefix or "") + name
