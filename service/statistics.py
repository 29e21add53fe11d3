"""Per-model inference statistics, in the shape of the Open Inference Protocol's statistics
extension (Triton's `GET /v2/models/{name}/stats`), so its clients read them as they are.

Counted on the event loop (requests) and in the batcher's thread (inference calls); each update is
a few integer additions under one lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """How many of something, and how long they took in all (nanoseconds, as Triton counts)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    """Requests that succeeded or failed (time from submitting to the answer), and the inference
    calls that ran them (`compute_infer`: ONNX Runtime time, counted per batch)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0  # images scored
    execution_count: int = 0  # inference calls (batches)
    last_inference_ms: int = 0  # since the epoch
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request_done(self, seconds: float, *, images: int, ok: bool) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(seconds)
            if ok:
                self.inference_count += images
                self.last_inference_ms = int(time.time() * 1000)

    def batch_done(self, seconds: float) -> None:
        with self._lock:
            self.execution_count += 1
            self.compute_infer.add(seconds)

    def to_v2(self, name: str, version: str) -> dict:
        """One entry of the extension's `model_stats` list."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "compute_infer": self.compute_infer.to_json(),
                },
            }
