"""The bundle's metadata as typed, frozen records: read from JSON once, checked when built.

    BundleSpec
      format, format_version   "normalcy.bundle", 1
      model            ModelInfo          kind, hyperparameters, parameters, conditional, ...
      input            ImageInput         name, dtype "uint8", channels, height, width, color_mode
      preprocessing    Preprocessing      resize "bilinear" | "refuse", color "convert" | "refuse"
      noise            NoiseSpec | None   the VAE's noise input: input, samples, latent_dim, seed
      labels           LabelSpec | None   a class-conditional bundle's label input: input, dtype
                                          "int64", num_classes, classes (those seen in training)
      scores           {name: ScoreSpec}  each with its calibration reference; one class per kind
                                          of score (score_kinds.py)
      default_score    a key of `scores` (default_score_reason says why)
      heatmap          HeatmapSpec | None per-pixel normal statistics that make maps z-scores
      calibration      Calibration        alpha, n_reference, data, ... and how alpha was chosen
      training         TrainingFacts      data fingerprint, epochs, history, versions, ...
      precision        Precision | None   an int8 graph: how it was quantised and the parity
                                          measured against its fp32 source (None: fp32, as
                                          exported)

Each is a Record (records.py): checked when built, so a spec that exists is valid; `from_json`
refuses what is missing, mistyped or inconsistent with a BundleError saying where; `to_json` writes
the same JSON back. A key this version does not know is kept in the record's `extra` and written
back unchanged, so a bundle with a later version's optional field loads here and survives
`normalcy calibrate`; a change older readers must not ignore bumps `format_version` (refused), and
a score of an unknown kind is refused: its meaning cannot be guessed.

A new kind of score is one class in score_kinds.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .calibration import check_alpha
from .errors import BundleError, InputError
from .records import Record, as_tuple, numbers, require
from .score_kinds import CombinedScore, ScoreSpec

FORMAT = "normalcy.bundle"
FORMAT_VERSION = 1
MODEL_KINDS = ("pixelcnn", "vae")
# The score each model kind reports as its likelihood in bits/dim (exact NLL, or the IWAE bound).
LIKELIHOOD_SCORES = {"pixelcnn": "nll", "vae": "iwae"}
COLOR_MODES = {"L": 1, "RGB": 3}


@dataclass(frozen=True, kw_only=True)
class ModelInfo(Record):
    kind: str  # pixelcnn | vae
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)  # the model's config
    parameters: int | None = None
    conditional: bool | None = None
    num_classes: int | None = None
    background: bool | None = None  # a PixelCNN fitted with a background model

    def __post_init__(self):
        require(self.kind in MODEL_KINDS, f"kind {self.kind!r} is not one of {MODEL_KINDS}")


@dataclass(frozen=True, kw_only=True)
class ImageInput(Record):
    """The graph's image input: uint8 (B, C, H, W)."""

    name: str
    channels: int
    height: int
    width: int
    color_mode: str  # L | RGB
    dtype: str = "uint8"

    def __post_init__(self):
        mode = self.color_mode
        require(mode in COLOR_MODES, f"color_mode {mode!r} is not one of {list(COLOR_MODES)}")
        require(
            type(self.channels) is int and self.channels == COLOR_MODES[mode],
            f"color mode {mode} needs {COLOR_MODES[mode]} channel(s), metadata says "
            f"{self.channels}",
        )
        for dim in ("height", "width"):
            value = getattr(self, dim)
            require(type(value) is int and value > 0, f"{dim} must be a whole number > 0")
        require(self.dtype == "uint8", "dtype must be uint8")
        require(isinstance(self.name, str), "name missing")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


@dataclass(frozen=True, kw_only=True)
class Preprocessing(Record):
    """What happens to images of another size or colour mode: converted, or refused."""

    resize: str  # bilinear | refuse
    color: str  # convert | refuse
    scale: str | None = None  # how the graph scales pixels (documentation)

    def __post_init__(self):
        require(self.resize in ("bilinear", "refuse"), "resize must be 'bilinear' or 'refuse'")
        require(self.color in ("convert", "refuse"), "color must be 'convert' or 'refuse'")


@dataclass(frozen=True, kw_only=True)
class NoiseSpec(Record):
    """The VAE's reparameterisation noise (B, K, latent), drawn by the runtime from `seed`."""

    input: str
    samples: int
    latent_dim: int
    seed: int

    def __post_init__(self):
        require(self.samples >= 1, "samples must be >= 1")


@dataclass(frozen=True, kw_only=True)
class LabelSpec(Record):
    """A class-conditional bundle's second input: one int64 label per image, among `classes`."""

    PARSE: ClassVar = {"classes": as_tuple}

    input: str
    num_classes: int
    classes: tuple[int, ...]
    dtype: str = "int64"

    def __post_init__(self):
        require(self.dtype == "int64", "dtype must be int64")
        k = self.num_classes
        require(isinstance(k, int) and k >= 1, "num_classes must be an integer >= 1")
        require(
            isinstance(self.classes, tuple)
            and bool(self.classes)
            and all(isinstance(c, int) and 0 <= c < k for c in self.classes),
            f"classes must be a non-empty list of integers in [0, {k})",
        )


def _scores(value) -> dict[str, ScoreSpec]:
    require(isinstance(value, dict), "scores must be a JSON object")
    return {name: ScoreSpec.parse(data, name) for name, data in value.items()}


# --- the rest -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HeatmapSpec(Record):
    """The per-pixel map output and, once calibrated, its normal mean and std per pixel."""

    NULLABLE: ClassVar = frozenset({"mean", "std"})
    PARSE: ClassVar = {"mean": numbers, "std": numbers}

    output: str
    units: str | None = None
    mean: tuple[float, ...] | None = None  # C*H*W values
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        require(isinstance(self.output, str), "names no output")
        for name in ("mean", "std"):
            values = getattr(self, name)
            require(values is None or isinstance(values, tuple), f"{name} must be a list or null")


@dataclass(frozen=True, kw_only=True)
class Calibration(Record):
    NULLABLE: ClassVar = frozenset({"data"})

    alpha: float  # the default false-positive rate: anomalous iff p_value <= alpha
    n_reference: int = 0
    data: str | None = None  # what the references were computed on
    data_fingerprint: str | None = None
    choice: Mapping[str, Any] | None = None  # how labelled anomalies chose alpha, when they did

    def __post_init__(self):
        try:
            object.__setattr__(self, "alpha", check_alpha(self.alpha))  # a float from here on
        except InputError as error:
            raise BundleError(str(error)) from None


@dataclass(frozen=True, kw_only=True)
class TrainingFacts(Record):
    """What training recorded; the fields normalcy itself reads are typed, the rest is `extra`."""

    NULLABLE: ClassVar = frozenset({"normal_classes"})

    data: str | None = None
    normal_classes: list[int] | None = None
    data_fingerprint: str | None = None
    epochs: int | None = None
    history: list[dict] | None = None  # per epoch: train/validation bits/dim, seconds
    validation_bits_per_dim: float | None = None
    validation_bits_per_dim_onnx: float | None = None


@dataclass(frozen=True, kw_only=True)
class Parity(Record):
    """A quantised graph against its fp32 source on held-out normal images (and, when given,
    anomalies): how far the likelihood in bits/dim moved, and how the default score's AUROC did."""

    NULLABLE: ClassVar = frozenset({"auroc_fp32", "auroc_quantized", "auroc_change"})

    data: str  # the held-out normal images (never used to set activation ranges)
    n_images: int
    score: str  # the likelihood score compared (nll | iwae)
    mean_abs_delta_bits_per_dim: float
    max_abs_delta_bits_per_dim: float
    budget_mean_abs_delta_bits_per_dim: float
    auroc_score: str | None = None  # the score the AUROCs are for (the default score)
    anomalous_data: str | None = None
    auroc_fp32: float | None = None
    auroc_quantized: float | None = None
    auroc_change: float | None = None  # quantized minus fp32
    budget_auroc_change: float | None = None


@dataclass(frozen=True, kw_only=True)
class Precision(Record):
    """How a bundle's graph was quantised (static QDQ: int8 weights, uint8 activations)."""

    PARSE: ClassVar = {
        "fp32_nodes": as_tuple,
        "parity": lambda v: Parity.from_json(v, "precision.parity"),
    }

    weights: str  # int8
    activations: str  # uint8
    method: str  # e.g. "onnxruntime static QDQ, per-channel weights, MinMax ranges"
    quantized_nodes: int
    fp32_nodes: tuple[str, ...] = ()  # quantisable nodes kept in fp32 (they moved the scores most)
    range_data: str | None = None  # the normal images that set the activation ranges
    n_range_images: int | None = None
    source_sha256: str | None = None  # the fp32 bundle it was made from
    parity: Parity

    def __post_init__(self):
        require(self.weights in ("int8",), "weights must be 'int8'")
        require(self.activations in ("uint8", "int8"), "activations must be 'uint8' or 'int8'")
        require(isinstance(self.fp32_nodes, tuple), "fp32_nodes must be a list of node names")


@dataclass(frozen=True, kw_only=True)
class BundleSpec(Record):
    """Everything a server needs besides the graph."""

    NULLABLE: ClassVar = frozenset({"noise", "labels", "heatmap"})
    PARSE: ClassVar = {
        "model": lambda v: ModelInfo.from_json(v, "model"),
        "input": lambda v: ImageInput.from_json(v, "input"),
        "preprocessing": lambda v: Preprocessing.from_json(v, "preprocessing"),
        "noise": lambda v: NoiseSpec.from_json(v, "noise"),
        "labels": lambda v: LabelSpec.from_json(v, "labels"),
        "scores": _scores,
        "heatmap": lambda v: HeatmapSpec.from_json(v, "heatmap"),
        "calibration": lambda v: Calibration.from_json(v, "calibration"),
        "training": lambda v: TrainingFacts.from_json(v, "training"),
        "precision": lambda v: Precision.from_json(v, "precision"),
    }

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    model: ModelInfo
    input: ImageInput
    preprocessing: Preprocessing
    noise: NoiseSpec | None = None
    labels: LabelSpec | None = None
    scores: Mapping[str, ScoreSpec]
    default_score: str
    default_score_reason: str | None = None
    heatmap: HeatmapSpec | None = None
    calibration: Calibration
    training: TrainingFacts = field(default_factory=TrainingFacts)
    precision: Precision | None = None  # None: the fp32 graph as exported

    @classmethod
    def from_json(cls, data, what: str = "metadata") -> BundleSpec:
        # The format and version first: a later version may lack what this one requires.
        require(isinstance(data, dict), f"{what} must be a JSON object")
        require(data.get("format") == FORMAT, f"{what} format must be '{FORMAT}'")
        version = data.get("format_version")
        require(
            version == FORMAT_VERSION,
            f"unknown {what} format_version {version!r}; this normalcy reads version "
            f"{FORMAT_VERSION}",
        )
        return super().from_json(data, what)

    def __post_init__(self):
        conditional = self.model.conditional
        require(
            conditional is None or bool(conditional) == (self.labels is not None),
            f"model.conditional is {conditional} but labels is "
            f"{None if self.labels is None else self.labels.to_json()}",
        )
        require(isinstance(self.scores, Mapping) and bool(self.scores), "lists no scores")
        require(
            self.default_score in self.scores,
            f"default_score {self.default_score!r} is not among the scores {list(self.scores)}",
        )
        for name, score in self.scores.items():
            members = score.statistics if isinstance(score, CombinedScore) else ()
            for member in members:
                require(
                    member in self.graph_scores,
                    f"score {name!r} combines {member!r}, which is not one of this bundle's "
                    f"scores computed from the graph {self.graph_scores}",
                )
        if self.heatmap is not None:
            size = int(np.prod(self.input.shape))
            for name in ("mean", "std"):
                values = getattr(self.heatmap, name)
                require(
                    values is None or len(values) == size,
                    f"heatmap {name} must hold channels*height*width = {size} values",
                )

    # --- what readers ask ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def score_names(self) -> list[str]:
        return list(self.scores)

    @property
    def graph_scores(self) -> list[str]:
        """The scores computed from graph outputs alone: every score but the combined ones."""
        return [name for name, s in self.scores.items() if not isinstance(s, CombinedScore)]

    @property
    def likelihood_score(self) -> str:
        """The score that is the model's likelihood in bits/dim (exact NLL or the IWAE bound)."""
        return LIKELIHOOD_SCORES[self.model.kind]

    def score_name(self, name: str | None) -> str:
        """`name`, or the default score for None; InputError when the bundle does not offer it."""
        name = self.default_score if name is None else name
        if name not in self.scores:
            msg = f"unknown score {name!r}; this bundle offers {self.score_names}"
            raise InputError(msg)
        return name

    def is_calibrated(self) -> bool:
        return all(score.reference for score in self.scores.values())

    def graph_outputs(self) -> set[str]:
        """Every graph output the metadata refers to."""
        needed = {output for score in self.scores.values() for output in score.inputs()}
        return needed | ({self.heatmap.output} if self.heatmap else set())
