"""/metrics carries every agreed series, with the agreed labels."""

from __future__ import annotations

import re

import numpy as np

AGREED = [
    "normalcy_requests_total",
    "normalcy_request_duration_seconds",
    "normalcy_inference_duration_seconds",
    "normalcy_batch_size",
    "normalcy_queue_depth",
    "normalcy_queue_capacity",
    "normalcy_images_scored_total",
    "normalcy_anomalies_total",
    "normalcy_score",
    "normalcy_p_value",
    "normalcy_pvalue_drift_ks_statistic",
    "normalcy_pvalue_drift_ks_p_value",
    "normalcy_model_alpha",
    "normalcy_model_info",
]


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def test_scoring_shows_up_in_every_agreed_series(make_client):
    client = make_client(drift_min_samples=10, drift_window=50)
    images = np.random.default_rng(0).integers(0, 17, (12, 8, 8)).tolist()
    assert client.post("/v1/models/vae/score", json={"images": images}).status_code == 200
    client.post("/v1/models/vae/score?alpha=7", json={"images": images})  # a 400
    text = client.get("/metrics").text
    for name in AGREED:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?{{", text, re.MULTILINE), name
    assert (
        _value(
            text,
            'normalcy_requests_total{code="200",endpoint="/v1/models/{name}/score",model="vae"}',
        )
        == 1
    )
    assert (
        _value(
            text,
            'normalcy_requests_total{code="400",endpoint="/v1/models/{name}/score",model="vae"}',
        )
        == 1
    )
    assert _value(text, 'normalcy_images_scored_total{model="vae"}') == 12
    assert _value(text, 'normalcy_batch_size_sum{model="vae"}') >= 12
    assert _value(text, 'normalcy_p_value_count{model="vae"}') == 12
    assert _value(text, 'normalcy_queue_capacity{model="vae"}') == 1024
    assert _value(text, 'normalcy_model_alpha{model="vae"}') == 0.01
    assert 0 <= _value(text, 'normalcy_pvalue_drift_ks_statistic{model="vae"}') <= 1
    default = "combined"  # the default score of every newly trained bundle
    assert re.search(rf'normalcy_score_count\{{model="vae",score="{default}"\}} 12', text)
    assert re.search(
        r'normalcy_model_info\{kind="vae",model="vae",provider="CPUExecutionProvider",'
        r'version="[0-9a-f]{12}"\} 1',
        text,
    )


def test_unknown_model_names_do_not_create_series(client):
    client.post("/v1/models/made-up-name/score", json={"images": []})
    text = client.get("/metrics").text
    assert "made-up-name" not in text
    assert 'code="404",endpoint="/v1/models/{name}/score",model=""' in text


def _buckets(text: str, model: str, score: str) -> dict[float, float]:
    pattern = rf'^normalcy_score_bucket\{{le="([^"]+)",model="{model}",score="{score}"\}} (\S+)$'
    return {float(le): float(n) for le, n in re.findall(pattern, text, re.MULTILINE)}


def test_score_buckets_come_from_each_models_calibration_reference(client, vae_bundle, digits_test):
    from detectors import Detector
    from detectors.bundle import Bundle

    detector = Detector(Bundle.read(vae_bundle), device="cpu")
    text = client.get("/metrics").text
    for score in detector.score_names:
        reference = detector.reference(score)
        bounds = sorted(b for b in _buckets(text, "vae", score) if np.isfinite(b))
        # Most bounds fall among the reference's own scores, whatever the score's units.
        inside = [b for b in bounds if reference.min() <= b <= reference.max()]
        assert len(inside) >= 6, (score, bounds, reference.min(), reference.max())
        assert detector.threshold(score) in bounds  # "above the threshold" is one bucket
    # Scoring the calibration's own kind of images (normal digits, 0-4) spreads over many buckets,
    # not one or two. (Random pixels are anomalous to every member: all above the threshold.)
    normal = digits_test.images[np.isin(digits_test.labels, [0, 1, 2, 3, 4])][:40]
    images = normal.reshape(40, 8, 8).tolist()
    score = detector.default_score
    client.post("/v1/models/vae/score", json={"images": images})
    counts = _buckets(client.get("/metrics").text, "vae", score)
    per_bucket = np.diff([0.0, *(counts[le] for le in sorted(counts))])
    assert per_bucket.sum() == 40
    assert per_bucket.max() < 40


def test_labelled_counters_exist_at_zero_and_no_created_series(client):
    text = client.get("/metrics").text  # before any request
    for model in ("vae", "pixelcnn"):
        for reason in ("queue_full", "shutting_down"):
            series = f'normalcy_rejected_total{{model="{model}",reason="{reason}"}}'
            assert _value(text, series) == 0
        assert _value(text, f'normalcy_model_reloads_total{{model="{model}"}}') == 0
        assert _value(text, f'normalcy_model_load_failures_total{{model="{model}"}}') == 0
        assert _value(text, f'normalcy_anomalies_total{{model="{model}"}}') == 0
    assert "_created" not in text
