"""Every Prometheus metric the service exports, defined here and nowhere else.

The names and labels are a contract with deploy/prometheus (alert rules) and deploy/grafana
(dashboard): change them together. Each app gets its own registry, so tests do not share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

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
# Raw scores are bits/dim (0..8 for 8-bit images) or differences of two such (about -8..8).
SCORE_BUCKETS = (
    -8.0,
    -4.0,
    -3.0,
    -2.0,
    -1.5,
    -1.0,
    -0.5,
    -0.25,
    0.0,
    0.25,
    0.5,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    5.0,
    6.0,
    8.0,
    12.0,
    16.0,
)
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
        self.score = Histogram(
            "normalcy_score",
            "raw score (bits/dim or a difference of such)",
            ["model", "score"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
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
        self, name: str, *, version: str, kind: str, provider: str, alpha: float, capacity: int
    ) -> None:
        self._drop_info(name)
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
        for gauge in (
            self.model_alpha,
            self.queue_capacity,
            self.queue_depth,
            self.drift_statistic,
            self.drift_p_value,
        ):
            _remove(gauge, name)

    def _drop_info(self, name: str) -> None:
        old = self._info_labels.pop(name, None)
        if old is not None:
            _remove(self.model_info, *old)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
