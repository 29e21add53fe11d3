"""A fitted detector: an ONNX bundle plus its calibration, turning images into decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .calibration import check_alpha, conformal_p_values, conformal_threshold, map_moments
from .errors import BundleError, InputError
from .images import InputSpec
from .labels import check_labels
from .runtime import OnnxSession
from .spec import BundleSpec


@dataclass(frozen=True)
class ScoreResult:
    """Per-image results for one batch; every array has the batch as its first axis.

    The decision rule has its home here: `is_anomaly` is derived, `p_value <= alpha`, whenever a
    result is made (a slice, a join, another alpha), so it cannot disagree with the p-values.
    """

    score_name: str
    alpha: float
    threshold: float  # the same rule as `score > threshold` (+inf: the reference is too small)
    scores: np.ndarray  # (B,) raw score, higher = more anomalous
    p_values: np.ndarray  # (B,) conformal p-values in (0, 1]
    heatmap: np.ndarray | None = None  # (B, C, H, W) per-pixel z-score against normal images
    bits_map: np.ndarray | None = None  # (B, C, H, W) per-pixel map in bits
    probability: np.ndarray | None = None  # (B,) P(anomaly), when the bundle maps this score
    is_anomaly: np.ndarray = field(init=False)  # (B,) bool: p_value <= alpha

    def __post_init__(self):
        object.__setattr__(self, "is_anomaly", self.p_values <= self.alpha)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, images: slice) -> ScoreResult:
        """The results of a slice of the batch's images."""
        return replace(self, **{name: values[images] for name, values in self._per_image()})

    def _per_image(self) -> list[tuple[str, np.ndarray]]:
        names = ("scores", "p_values", "heatmap", "bits_map", "probability")
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    def decided_at(self, alpha: float, threshold: float) -> ScoreResult:
        """The same scores decided at another alpha, whose threshold is given."""
        return replace(self, alpha=alpha, threshold=threshold)

    @classmethod
    def concatenate(cls, parts: list[ScoreResult]) -> ScoreResult:
        """Results of consecutive slices (one score, alpha and threshold), joined into one."""
        if len(parts) == 1:
            return parts[0]
        joined = {
            name: np.concatenate([getattr(part, name) for part in parts])
            for name, _ in parts[0]._per_image()
        }
        return replace(parts[0], **joined)


class Detector:
    """`Detector.load(path).score(images)` -> raw scores, conformal p-values, decisions."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        device: str = "auto",
        threads: int | None = None,
        raw_only: bool = False,
    ):
        """`raw_only` opens a bundle that may not be calibrated yet, for raw scores only (how
        calibration scores its images); p-values and decisions then need a reference."""
        if not (raw_only or bundle.is_calibrated()):
            raise BundleError(self._uncalibrated(bundle))
        self.bundle = bundle
        self.spec: BundleSpec = bundle.spec
        self.input_spec = InputSpec.of(self.spec)
        self.session = OnnxSession(bundle, device=device, threads=threads)
        self._references = {name: bundle.reference(name) for name in self.spec.scores}
        # Maps from raw score to P(anomaly), fitted on labelled anomalies by `normalcy calibrate`.
        self._probability = {
            name: score.probability
            for name, score in self.spec.scores.items()
            if score.probability is not None
        }
        heat = self.spec.heatmap
        shape = (1, *self.input_shape)
        mean, std = (None, None) if heat is None else (heat.mean, heat.std)
        self._heat_mean = np.asarray(mean, np.float64).reshape(shape) if mean else None
        self._heat_std = (
            np.maximum(np.asarray(std, np.float64).reshape(shape), 1e-3) if std else None
        )

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> Detector:
        return cls(Bundle.read(path), **kwargs)

    @staticmethod
    def _uncalibrated(bundle: Bundle) -> str:
        return (
            f"{bundle.path or 'bundle'} has no calibration reference; "
            "run `normalcy calibrate` on held-out normal data first"
        )

    # --- what the bundle says -------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input.shape

    @property
    def conditional(self) -> bool:
        """True when the bundle scores "a normal example of class y": one label per image."""
        return self.spec.labels is not None

    @property
    def classes(self) -> list[int] | None:
        """The class labels a conditional bundle accepts (None when unconditional)."""
        return None if self.spec.labels is None else list(self.spec.labels.classes)

    @property
    def has_heatmap(self) -> bool:
        return self.spec.heatmap is not None

    @property
    def score_names(self) -> list[str]:
        return self.spec.score_names

    @property
    def default_score(self) -> str:
        return self.spec.default_score

    @property
    def default_alpha(self) -> float:
        return self.spec.calibration.alpha

    def score_name(self, score: str | None = None) -> str:
        """The score `score` names (the default for None); InputError when not offered."""
        return self.spec.score_name(score)

    def reference(self, score: str | None = None) -> np.ndarray:
        reference = self._references[self.score_name(score)]
        if reference.size == 0:
            raise BundleError(self._uncalibrated(self.bundle))
        return reference

    def threshold(self, score: str | None = None, alpha: float | None = None) -> float:
        alpha = self.default_alpha if alpha is None else check_alpha(alpha)
        return conformal_threshold(self.reference(score), alpha)

    # --- scoring ---------------------------------------------------------------------------
    def check_images(self, images) -> np.ndarray:
        """Validate images against the bundle's input and return uint8 (B, C, H, W)."""
        return self.input_spec.batch(images)

    def check_labels(self, labels, n_images: int) -> np.ndarray | None:
        """Validate class labels for `n_images` images: int64 (B,) for a conditional bundle, None
        otherwise; InputError when missing, unexpected or not among the bundle's classes."""
        return check_labels(labels, n_images, self.spec.labels)

    def raw_scores(
        self, images, scores: list[str] | None = None, *, labels=None
    ) -> dict[str, np.ndarray]:
        """Raw scores (B,) for the named scores (all the bundle offers by default)."""
        values, _ = self.raw_scores_batched(images, scores, labels=labels, batch_size=None)
        return values

    def raw_scores_batched(
        self,
        images,
        scores: list[str] | None = None,
        *,
        labels=None,
        batch_size: int | None = 256,
        with_moments: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Raw scores (N,) of any number of images for the named scores (all by default), run
        `batch_size` images at a time (None: all at once); the one loop behind calibration,
        evaluation, training and reports.

        With `with_moments`, also the per-pixel sum and sum of squares of the heat-map output over
        all images, stacked as (2, C, H, W) (None for a bundle without a map). `on_batch(n)` is
        called after each batch of n images (progress bars)."""
        names = [self.score_name(name) for name in (scores or self.score_names)]
        images = self.check_images(images)
        labels = self.check_labels(labels, len(images))
        with_map = with_moments and self.has_heatmap
        step = batch_size or len(images)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        moments = None
        for start in range(0, len(images), step):
            batch_labels = None if labels is None else labels[start : start + step]
            values, bits_map = self.session.raw_scores(
                images[start : start + step], names, with_map=with_map, labels=batch_labels
            )
            for name in names:
                parts[name].append(values[name])
            if bits_map is not None:
                batch_moments = map_moments(bits_map)
                moments = batch_moments if moments is None else moments + batch_moments
            if on_batch is not None:
                on_batch(len(values[names[0]]))
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}, moments

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
        name = self.score_name(score)
        alpha = self.default_alpha if alpha is None else check_alpha(alpha)
        batch = self.check_images(images)
        labels = self.check_labels(labels, len(batch))
        return self.score_checked(batch, labels, name, alpha=alpha, heatmap=heatmap)

    def score_checked(
        self,
        batch: np.ndarray,
        labels: np.ndarray | None,
        score: str,
        *,
        alpha: float | None = None,
        heatmap: bool = False,
    ) -> ScoreResult:
        """`score` for images, labels, a score name and an alpha already checked (check_images,
        check_labels, score_name, check_alpha): the serving hot path, which checks each request
        once, before its images join a micro-batch. Default alpha for None."""
        alpha = self.default_alpha if alpha is None else alpha
        want_map = heatmap and self.has_heatmap
        values, bits_map = self.session.raw_scores(batch, [score], with_map=want_map, labels=labels)
        raw = values[score]
        if not np.all(np.isfinite(raw)):
            msg = f"score {score!r} is not finite for some images; the model output is unusable"
            raise InputError(msg)
        reference = self.reference(score)
        z_map = None
        if bits_map is not None:
            z_map = bits_map.astype(np.float64)
            if self._heat_mean is not None:
                z_map = (z_map - self._heat_mean) / self._heat_std
        return ScoreResult(
            score_name=score,
            alpha=alpha,
            threshold=conformal_threshold(reference, alpha),
            scores=raw,
            p_values=conformal_p_values(raw, reference),
            heatmap=z_map,
            bits_map=bits_map,
            probability=self._probability[score](raw) if score in self._probability else None,
        )
