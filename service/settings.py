"""The service's settings: one class, read from `NORMALCY_*` environment variables (and CLI flags),
checked at start-up so a bad value stops the service instead of surfacing at the first request."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import DirectoryPath, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything `normalcy serve` can be told; raises ValidationError on bad values."""

    model_config = SettingsConfigDict(env_prefix="NORMALCY_", extra="forbid")

    models_dir: DirectoryPath = Field(
        description="folder of bundles; each FILE.onnx serves as model FILE"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1, le=256, description="ONNX Runtime intra-op threads (default: every CPU)"
    )

    # Micro-batching and back-pressure.
    max_batch_size: int = Field(64, ge=1, le=4096, description="images per ONNX Runtime call")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="longest an image waits for companions"
    )
    max_queue_images: int = Field(1024, ge=1, description="images waiting per model before 429")

    # Limits on what one request may send.
    max_images_per_request: int = Field(256, ge=1)
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="decoded pixels (width x height) per encoded image, checked before decoding "
        "(decompression bombs); default: 64 x the model's input pixels (64x64 for an 8x8 model)",
    )

    # Security: scoring is open unless api_key is set; admin endpoints are off unless admin_key is.
    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None

    # What the service tells its callers about the bundles.
    show_data_paths: bool = Field(
        False,
        description="answer the data paths a bundle records (training, calibration) in full; "
        "by default only their last part, so server folders stay private",
    )

    # Hot swap, drift, shutdown, logs.
    watch_interval_s: float = Field(
        2.0, ge=0, description="model folder poll period; 0 turns it off"
    )
    warmup: bool = True
    drift_window: int = Field(1000, ge=10, description="served p-values in the drift window")
    drift_min_samples: int = Field(100, ge=10)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value):
        # `NORMALCY_API_KEY=` in a compose file means "no key", not "the empty key".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None):
        if value is not None and len(value.get_secret_value()) < 8:
            msg = "keys must be at least 8 characters"
            raise ValueError(msg)
        return value

    @property
    def inference_threads(self) -> int:
        """ONNX Runtime threads per model: by default every CPU this process may use. Inference
        dominates a request for full-size models: on 2 CPUs, 2 threads served the Fashion-MNIST VAE
        at 185-200 images/s against 131 with one CPU left to the event loop
        (benchmarks/results/serving.md)."""
        if self.threads is not None:
            return self.threads
        affinity = getattr(os, "sched_getaffinity", None)  # Linux: respects CPU pinning
        return len(affinity(0)) if affinity else (os.cpu_count() or 1)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_images_per_request > self.max_queue_images:
            msg = (
                f"max_images_per_request ({self.max_images_per_request}) exceeds max_queue_images "
                f"({self.max_queue_images}): such a request could never be queued"
            )
            raise ValueError(msg)
        if self.drift_min_samples > self.drift_window:
            msg = (
                f"drift_min_samples ({self.drift_min_samples}) exceeds drift_window "
                f"({self.drift_window})"
            )
            raise ValueError(msg)
        return self
