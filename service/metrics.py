"""Every Prometheus metric the service exports, defined here and nowhere else.

The names and labels are a contract with deploy/prometheus (alert rules) and deploy/grafana
(dashboard): change them together. Each app gets its own registry, so tests do not share counters.
A model's labelled counters exist, at zero, from the moment it loads, so `rate()` and dashboards
work before the first event; no `_created` series (they doubled the output and nothing reads them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .batcher import REJECTION_REASONS

disable_created_metrics()

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
INFERENCE_BUCKETS_S = (
    0.0002,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# normalcy_score buckets: these quantiles of the score's calibration reference, its threshold at the
# bundle's alpha, and points above the reference's top, where anomalies land. A score's units and
# range are its own (bits/dim about 0..8, recon_mse 0..0.12), so fixed buckets cannot fit them all.
SCORE_QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
SCORE_SPANS_ABOVE = (0.25, 0.5, 1.0, 2.0, 4.0)  # top of the reference + these x its spread
P_VALUE_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The service's metrics on one registry (process, platform and GC collectors included)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)

        # Requests, by route template (bounded cardinality) and status code.
        self.requests = Counter(
            "normalcy_requests_total",
            "HTTP requests answered",
            ["model", "endpoint", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "normalcy_request_duration_seconds",
            "HTTP request latency",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

        # Micro-batching.
        self.inference_duration = Histogram(
            "normalcy_inference_duration_seconds",
            "one ONNX Runtime call on a batch",
            ["model"],
            buckets=INFERENCE_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "normalcy_batch_size",
            "images per inference call",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "normalcy_queue_depth", "images waiting in the micro-batcher", ["model"], registry=r
        )
        self.queue_capacity = Gauge(
            "normalcy_queue_capacity", "most images that may wait", ["model"], registry=r
        )
        self.rejected = Counter(
            "normalcy_rejected_total",
            "requests shed (queue_full, shutting_down)",
            ["model", "reason"],
            registry=r,
        )

        # What the models said.
        self.images_scored = Counter(
            "normalcy_images_scored_total", "images scored", ["model"], registry=r
        )
        self.anomalies = Counter(
            "normalcy_anomalies_total", "images flagged as anomalous", ["model"], registry=r
        )
        self.score = ScoreHistograms(r)
        self.p_value = Histogram(
            "normalcy_p_value",
            "conformal p-value of served images",
            ["model"],
            buckets=P_VALUE_BUCKETS,
            registry=r,
        )
        self.drift_statistic = Gauge(
            "normalcy_pvalue_drift_ks_statistic",
            "KS distance of recent p-values from uniform",
            ["model"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "normalcy_pvalue_drift_ks_p_value",
            "KS test p-value of recent p-values against uniform",
            ["model"],
            registry=r,
        )

        # Models.
        self.model_alpha = Gauge(
            "normalcy_model_alpha",
            "false-positive rate the model was calibrated for",
            ["model"],
            registry=r,
        )
        self.model_info = Gauge(
            "normalcy_model_info",
            "model in service (value 1)",
            ["model", "version", "kind", "provider"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "normalcy_model_load_failures_total",
            "bundles refused at load or reload",
            ["model"],
            registry=r,
        )
        self.model_reloads = Counter(
            "normalcy_model_reloads_total",
            "models swapped for a new version while serving",
            ["model"],
            registry=r,
        )
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}

    # --- models coming and going ------------------------------------------------------------
    def model_loaded(
        self,
        name: str,
        *,
        version: str,
        kind: str,
        provider: str,
        alpha: float,
        capacity: int,
        score_buckets: Mapping[str, Sequence[float]],
    ) -> None:
        self._drop_info(name)
        self.score.set_model(name, score_buckets)
        for reason in REJECTION_REASONS:
            self.rejected.labels(name, reason)  # created at zero
        for counter in self._model_counters():
            counter.labels(name)
        labels = (name, version, kind, provider)
        self.model_info.labels(*labels).set(1)
        self._info_labels[name] = labels
        self.model_alpha.labels(name).set(alpha)
        self.queue_capacity.labels(name).set(capacity)
        self.queue_depth.labels(name).set(0)
        for gauge in (self.drift_statistic, self.drift_p_value):
            _remove(gauge, name)

    def model_removed(self, name: str) -> None:
        self._drop_info(name)
        self.score.remove_model(name)
        for reason in REJECTION_REASONS:
            _remove(self.rejected, name, reason)
        for counter in self._model_counters():
            _remove(counter, name)
        for gauge in (
            self.model_alpha,
            self.queue_capacity,
            self.queue_depth,
            self.drift_statistic,
            self.drift_p_value,
        ):
            _remove(gauge, name)

    def _model_counters(self) -> tuple[Counter, ...]:
        """Counters labelled by model alone: created at zero on load, dropped on removal."""
        return (self.model_reloads, self.model_load_failures, self.images_scored, self.anomalies)

    def _drop_info(self, name: str) -> None:
        old = self._info_labels.pop(name, None)
        if old is not None:
            _remove(self.model_info, *old)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def score_buckets(reference: np.ndarray, threshold: float | None) -> tuple[float, ...]:
    """Bucket upper bounds for one score of one model, from its calibration reference."""
    reference = np.asarray(reference, np.float64)
    reference = reference[np.isfinite(reference)]
    if not reference.size:
        return ()
    quantiles = np.quantile(reference, SCORE_QUANTILES)
    spread = float(quantiles[-2] - quantiles[1]) or abs(float(quantiles[-1])) or 1.0  # q99 - q01
    top = float(reference.max())
    bounds = [
        float(f"{v:.4g}") for v in [*quantiles, *(top + k * spread for k in SCORE_SPANS_ABOVE)]
    ]
    if threshold is not None and np.isfinite(threshold):
        bounds.append(float(threshold))  # exact: "above the threshold" is one bucket boundary
    return tuple(sorted(set(bounds)))


class _ScoreSeries:
    def __init__(self, bounds: Sequence[float]):
        self.bounds = np.asarray(bounds, np.float64)
        self.counts = np.zeros(len(bounds) + 1, np.int64)  # the last is +Inf
        self.total = 0.0


class ScoreHistograms:
    """`normalcy_score{model, score}`: a histogram whose buckets are that model's and that
    score's own (prometheus_client's Histogram gives every label set the same buckets)."""

    def __init__(self, registry: CollectorRegistry):
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _ScoreSeries] = {}
        registry.register(self)

    def set_model(self, model: str, buckets: Mapping[str, Sequence[float]]) -> None:
        """A model (re)loaded: its series start again at zero, on its new buckets."""
        with self._lock:
            self._drop(model)
            for score, bounds in buckets.items():
                self._series[(model, score)] = _ScoreSeries(bounds)

    def remove_model(self, model: str) -> None:
        with self._lock:
            self._drop(model)

    def _drop(self, model: str) -> None:
        for key in [key for key in self._series if key[0] == model]:
            del self._series[key]

    def observe(self, model: str, score: str, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64)
        with self._lock:
            series = self._series.get((model, score))
            if series is None:  # a score the model did not announce: nothing to count it in
                return
            # Bucket `le` holds values <= le: the first bound >= the value.
            np.add.at(series.counts, np.searchsorted(series.bounds, values, side="left"), 1)
            series.total += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "normalcy_score",
            "raw score, in the score's own units; buckets from its calibration reference",
            labels=["model", "score"],
        )
        with self._lock:
            for (model, score), series in sorted(self._series.items()):
                # Samples written out: HistogramMetricFamily drops _count and _sum when a bucket
                # is negative (an OpenMetrics rule), and differences of bits/dim often are.
                labels = {"model": model, "score": score}
                les = [floatToGoString(b) for b in series.bounds.tolist()] + ["+Inf"]
                for le, count in zip(les, np.cumsum(series.counts).tolist(), strict=True):
                    family.samples.append(
                        Sample("normalcy_score_bucket", {**labels, "le": le}, count)
                    )
                family.samples.append(
                    Sample("normalcy_score_count", labels, int(series.counts.sum()))
                )
                family.samples.append(Sample("normalcy_score_sum", labels, series.total))
        yield family


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
