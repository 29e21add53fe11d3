"""Response shapes, for the OpenAPI docs and for tests that check answers against them.

Routes build plain dicts (fast) and declare these as their response models.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageScore(BaseModel):
    index: int
    filename: str | None = None
    score: float = Field(description="raw score; higher is more anomalous")
    score_name: str
    p_value: float = Field(gt=0, le=1, description="conformal p-value against the calibration set")
    is_anomaly: bool = Field(description="p_value <= alpha, equivalently score > threshold")
    threshold: float | None = Field(description="null when no score can reach p <= alpha")
    alpha: float
    probability: float | None = Field(
        None, description="P(anomaly), when the bundle was calibrated on labelled anomalies"
    )
    label: int | None = Field(None, description="the class it was scored as (conditional models)")
    heatmap: list[list[list[float]]] | None = Field(None, description="(C, H, W), when asked")


class ScoreResponse(BaseModel):
    model: str
    version: str
    score_name: str
    alpha: float
    threshold: float | None
    heatmap_units: str | None = None
    results: list[ImageScore]


class ModelList(BaseModel):
    models: list[dict]


class ReloadResponse(BaseModel):
    loaded: list[str]
    unchanged: list[str]
    removed: list[str]
    failed: dict[str, str]


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error shape (a plain string), normalcy's code beside it."""

    error: str = Field(description="what went wrong")
    code: str = Field(examples=["unknown_model"], description="normalcy's stable error code")


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 429, 503)}


def v2_errors(*statuses: int) -> dict:
    """`responses=` for a /v2 route that can answer these statuses."""
    return {status: {"model": V2ErrorResponse} for status in statuses}


V2_INFER_ERRORS = v2_errors(400, 401, 404, 413, 415, 429, 503)
