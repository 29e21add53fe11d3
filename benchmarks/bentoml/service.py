"""BentoML serving a normalcy bundle with adaptive batching: the peer in benchmarks/serving.py.

It does the same work per image as `normalcy serve` (detectors.Detector.score: ONNX Runtime, the
score correction and the conformal p-value), imported from this checkout rather than installed,
so the BentoML environment needs only detectors' own dependencies. Configured by environment:
NORMALCY_BENTO_BUNDLE (the .onnx file), NORMALCY_BENTO_DEVICE (cpu | cuda | auto),
NORMALCY_BENTO_MAX_BATCH (default 64), NORMALCY_BENTO_MAX_LATENCY_MS (default 10000).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for `detectors`

from detectors import Detector  # noqa: E402

MAX_BATCH = int(os.environ.get("NORMALCY_BENTO_MAX_BATCH", "64"))
MAX_LATENCY_MS = int(os.environ.get("NORMALCY_BENTO_MAX_LATENCY_MS", "10000"))


@bentoml.service(workers=1, traffic={"timeout": 60})
class Scorer:
    def __init__(self) -> None:
        self.detector = Detector.load(
            os.environ["NORMALCY_BENTO_BUNDLE"],
            device=os.environ.get("NORMALCY_BENTO_DEVICE", "cpu"),
        )

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def score(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (B, C, H, W) -> (B, 3): raw score, p-value, is_anomaly (0/1)."""
        result = self.detector.score(images)
        return np.stack([result.scores, result.p_values, result.is_anomaly.astype(np.float64)], 1)
