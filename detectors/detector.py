"""A fitted detector: an ONNX bundle plus its calibration, turning images into decisions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, conformal_p_values, conformal_threshold
from .errors import BundleError, InputError
from .images import as_uint8_batch
from .labels import check_labels, label_spec
from .runtime import OnnxSession
from .supervised import ProbabilityMap


@dataclass(frozen=True)
class ScoreResult:
    """Per-image results for one batch; every array has the batch as its first axis."""

    score_name: str
    alpha: float
    threshold: float  # the decision rule is `score > threshold`, equivalently `p_value <= alpha`
    scores: np.ndarray  # (B,) raw score, higher = more anomalous
    p_values: np.ndarray  # (B,) conformal p-values in (0, 1]
    is_anomaly: np.ndarray  # (B,) bool
    heatmap: np.ndarray | None = None  # (B, C, H, W) per-pixel z-score against normal images
    bits_map: np.ndarray | None = None  # (B, C, H, W) per-pixel map in bits
    probability: np.ndarray | None = None  # (B,) P(anomaly), when the bundle maps this score

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """`Detector.load(path).score(images)` -> raw scores, conformal p-values, decisions."""

    def __init__(self, bundle: Bundle, *, device: str = "auto", threads: int | None = None):
        if not bundle.is_calibrated():
            msg = (
                f"{bundle.path or 'bundle'} has no calibration reference; "
                "run `normalcy calibrate` on held-out normal data first"
            )
            raise BundleError(msg)
        self.bundle = bundle
        self.session = OnnxSession(bundle, device=device, threads=threads)
        self._references = {name: bundle.reference(name) for name in bundle.score_names()}
        # Maps from raw score to P(anomaly), fitted on labelled anomalies by `normalcy calibrate`.
        self._probability = {
            name: ProbabilityMap.from_json(spec["probability"])
            for name, spec in bundle.metadata["scores"].items()
            if spec.get("probability")
        }
        heat = bundle.metadata.get("heatmap") or {}
        shape = (1, *self.input_shape)
        self._heat_mean = (
            np.asarray(heat["mean"], np.float64).reshape(shape) if heat.get("mean") else None
        )
        std = np.asarray(heat["std"], np.float64).reshape(shape) if heat.get("std") else None
        self._heat_std = None if std is None else np.maximum(std, 1e-3)

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> Detector:
        return cls(Bundle.read(path), **kwargs)

    # --- what the bundle says -------------------------------------------------------------
    @property
    def metadata(self) -> dict:
        return self.bundle.metadata

    @property
    def kind(self) -> str:
        return self.bundle.kind

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def input_shape(self) -> tuple[int, int, int]:
        spec = self.metadata["input"]
        return spec["channels"], spec["height"], spec["width"]

    @property
    def conditional(self) -> bool:
        """True when the bundle scores "a normal example of class y": one label per image."""
        return label_spec(self.metadata) is not None

    @property
    def classes(self) -> list[int] | None:
        """The class labels a conditional bundle accepts (None when unconditional)."""
        spec = label_spec(self.metadata)
        return None if spec is None else list(spec["classes"])

    @property
    def score_names(self) -> list[str]:
        return self.bundle.score_names()

    @property
    def default_score(self) -> str:
        return self.metadata["default_score"]

    @property
    def default_alpha(self) -> float:
        return float(self.metadata["calibration"]["alpha"])

    def reference(self, score: str | None = None) -> np.ndarray:
        return self._references[self._score_name(score)]

    def threshold(self, score: str | None = None, alpha: float | None = None) -> float:
        alpha = self.default_alpha if alpha is None else check_alpha(alpha)
        return conformal_threshold(self.reference(score), alpha)

    # --- scoring ---------------------------------------------------------------------------
    def _score_name(self, score: str | None) -> str:
        name = self.default_score if score is None else score
        if name not in self._references:
            msg = f"unknown score {name!r}; this bundle offers {self.score_names}"
            raise InputError(msg)
        return name

    def check_images(self, images) -> np.ndarray:
        """Validate images against the bundle's input and return uint8 (B, C, H, W)."""
        channels, height, width = self.input_shape
        return as_uint8_batch(images, channels=channels, height=height, width=width)

    def check_labels(self, labels, n_images: int) -> np.ndarray | None:
        """Validate class labels for `n_images` images: int64 (B,) for a conditional bundle, None
        otherwise; InputError when missing, unexpected or not among the bundle's classes."""
        return check_labels(labels, n_images, label_spec(self.metadata))

    def raw_scores(
        self, images, scores: list[str] | None = None, *, labels=None
    ) -> dict[str, np.ndarray]:
        """Raw scores (B,) for the named scores (all the bundle offers by default)."""
        names = [self._score_name(name) for name in (scores or self.score_names)]
        batch = self.check_images(images)
        labels = self.check_labels(labels, len(batch))
        values, _ = self.session.raw_scores(batch, names, labels=labels)
        return values

    def score(
        self,
        images,
        *,
        labels=None,
        score: str | None = None,
        alpha: float | None = None,
        heatmap: bool = False,
    ) -> ScoreResult:
        """Score a batch of images: raw score, p-value and decision for each. A conditional bundle
        needs `labels`, one class per image: the question becomes "normal for its class?"."""
        name = self._score_name(score)
        alpha = self.default_alpha if alpha is None else check_alpha(alpha)
        batch = self.check_images(images)
        labels = self.check_labels(labels, len(batch))
        want_map = heatmap and bool(self.metadata.get("heatmap"))
        values, bits_map = self.session.raw_scores(batch, [name], with_map=want_map, labels=labels)
        raw = values[name]
        if not np.all(np.isfinite(raw)):
            msg = f"score {name!r} is not finite for some images; the model output is unusable"
            raise InputError(msg)
        p_values = conformal_p_values(raw, self._references[name])
        z_map = None
        if bits_map is not None:
            z_map = bits_map.astype(np.float64)
            if self._heat_mean is not None:
                z_map = (z_map - self._heat_mean) / self._heat_std
        return ScoreResult(
            score_name=name,
            alpha=alpha,
            threshold=conformal_threshold(self._references[name], alpha),
            scores=raw,
            p_values=p_values,
            is_anomaly=p_values <= alpha,
            heatmap=z_map,
            bits_map=bits_map,
            probability=self._probability[name](raw) if name in self._probability else None,
        )
