"""The detector bundle: one ONNX file whose `metadata_props` carry versioned JSON.

Everything a server needs besides the graph travels under the key `normalcy`:

    format, format_version   "normalcy.bundle", 1
    model                    {"kind": "pixelcnn" | "vae", "hyperparameters": {...}, ...}
    input                    {"name", "dtype": "uint8", "channels", "height", "width", "color_mode"}
    preprocessing            {"resize": "bilinear" | "refuse", "color": "convert" | "refuse"}
    noise                    null, or {"input", "samples", "latent_dim", "seed"} for the VAE
    labels                   null, or {"input", "dtype": "int64", "num_classes", "classes"} for a
                             class-conditional model (one label per image, a second graph input)
    scores                   {name: {"kind", "output", ..., "units", "direction",
                                     "reference": [...]}}
                             and optionally "probability": a map to P(anomaly) (supervised.py)
    default_score            a key of `scores`
    heatmap                  {"output", "mean": [...], "std": [...]} per-pixel normal statistics
    calibration              {"alpha", "n_reference", "data", ...} (thresholds follow from these)
                             and "choice": how labelled anomalies chose alpha, when they did
    training                 {"data_fingerprint", "epochs", "validation_bits_per_dim",
                              "package_version", ...}

A bundle whose metadata is missing, of another version, or inconsistent with its graph is refused
with a BundleError.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import check_alpha
from .errors import BundleError
from .onnxfile import read_metadata_props, with_metadata_props
from .supervised import ProbabilityMap

METADATA_KEY = "normalcy"
FORMAT = "normalcy.bundle"
FORMAT_VERSION = 1
MODEL_KINDS = ("pixelcnn", "vae")
COLOR_MODES = {"L": 1, "RGB": 3}
SCORE_KINDS = ("output", "complexity", "difference")
COMPRESSORS = ("zlib", "png")
HIGHER_IS_ANOMALOUS = "higher_is_anomalous"


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk: the model bytes, their sha256 and the validated metadata."""

    model_bytes: bytes
    sha256: str
    metadata: dict[str, Any]
    path: str | None = None

    @classmethod
    def read(cls, path: str | Path) -> Bundle:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            msg = f"cannot read bundle {path}: {error.strerror or error}"
            raise BundleError(msg) from None
        return cls.from_bytes(data, path=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str | None = None) -> Bundle:
        where = path or "bundle"
        if not data:
            msg = f"{where}: empty file, expected an ONNX model"
            raise BundleError(msg)
        try:
            props = read_metadata_props(data)
        except BundleError as error:
            msg = f"{where}: {error}"
            raise BundleError(msg) from None
        if METADATA_KEY not in props:
            msg = (
                f"{where}: no '{METADATA_KEY}' metadata; "
                f"this ONNX file was not exported by normalcy "
                "(train one with `normalcy train`)"
            )
            raise BundleError(msg)
        try:
            metadata = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as error:
            msg = f"{where}: metadata is not valid JSON ({error})"
            raise BundleError(msg) from None
        validate_metadata(metadata, where=where)
        return cls(data, hashlib.sha256(data).hexdigest(), metadata, path)

    @property
    def kind(self) -> str:
        return self.metadata["model"]["kind"]

    @property
    def version(self) -> str:
        """A short content hash: two bundles with the same bytes have the same version."""
        return self.sha256[:12]

    def score_names(self) -> list[str]:
        return list(self.metadata["scores"])

    def reference(self, score: str) -> np.ndarray:
        return np.asarray(self.metadata["scores"][score]["reference"], dtype=np.float64)

    def is_calibrated(self) -> bool:
        return all(spec["reference"] for spec in self.metadata["scores"].values())


def write_bundle(model_bytes: bytes, metadata: dict[str, Any], path: str | Path) -> Bundle:
    """Validate `metadata`, store it in the model bytes and write the file atomically."""
    validate_metadata(metadata, where=str(path))
    data = with_metadata_props(model_bytes, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return Bundle(data, hashlib.sha256(data).hexdigest(), copy.deepcopy(metadata), str(path))


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        msg = f"{where}: {message}"
        raise BundleError(msg)


def validate_metadata(meta: Any, *, where: str = "bundle") -> None:
    """Check the metadata's own consistency (the graph is checked when a session opens it)."""
    _require(isinstance(meta, dict), where, "metadata must be a JSON object")
    _require(meta.get("format") == FORMAT, where, f"metadata format must be '{FORMAT}'")
    version = meta.get("format_version")
    _require(
        version == FORMAT_VERSION,
        where,
        f"unknown metadata format_version {version!r}; "
        f"this normalcy reads version {FORMAT_VERSION}",
    )
    for key in ("model", "input", "preprocessing", "scores", "default_score", "calibration"):
        _require(key in meta, where, f"metadata lacks '{key}'")

    kind = meta["model"].get("kind")
    _require(kind in MODEL_KINDS, where, f"model kind {kind!r} is not one of {MODEL_KINDS}")

    inp = meta["input"]
    mode = inp.get("color_mode")
    _require(
        mode in COLOR_MODES, where, f"input color_mode {mode!r} is not one of {list(COLOR_MODES)}"
    )
    _require(
        inp.get("channels") == COLOR_MODES[mode],
        where,
        f"color mode {mode} needs "
        f"{COLOR_MODES[mode]} channel(s), metadata says {inp.get('channels')}",
    )
    for dim in ("height", "width"):
        _require(isinstance(inp.get(dim), int) and inp[dim] > 0, where, f"input {dim} must be > 0")
    _require(inp.get("dtype") == "uint8", where, "input dtype must be uint8")
    _require(isinstance(inp.get("name"), str), where, "input name missing")

    pre = meta["preprocessing"]
    _require(
        pre.get("resize") in ("bilinear", "refuse"),
        where,
        "preprocessing.resize must be 'bilinear' or 'refuse'",
    )
    _require(
        pre.get("color") in ("convert", "refuse"),
        where,
        "preprocessing.color must be 'convert' or 'refuse'",
    )

    noise = meta.get("noise")
    if noise is not None:
        for key in ("input", "samples", "latent_dim", "seed"):
            _require(key in noise, where, f"noise lacks '{key}'")
        _require(noise["samples"] >= 1, where, "noise.samples must be >= 1")

    labels = meta.get("labels")
    if labels is not None:
        _require(isinstance(labels, dict), where, "labels must be an object or null")
        for key in ("input", "num_classes", "classes"):
            _require(key in labels, where, f"labels lacks '{key}'")
        _require(labels.get("dtype", "int64") == "int64", where, "labels dtype must be int64")
        k = labels["num_classes"]
        _require(isinstance(k, int) and k >= 1, where, "labels.num_classes must be an integer >= 1")
        classes = labels["classes"]
        _require(
            isinstance(classes, list)
            and classes
            and all(isinstance(c, int) and 0 <= c < k for c in classes),
            where,
            f"labels.classes must be a non-empty list of integers in [0, {k})",
        )
    conditional = meta["model"].get("conditional")
    _require(
        conditional is None or bool(conditional) == (labels is not None),
        where,
        f"model.conditional is {conditional} but metadata labels is {labels!r}",
    )

    scores = meta["scores"]
    _require(isinstance(scores, dict) and scores, where, "metadata lists no scores")
    for name, spec in scores.items():
        _require(
            spec.get("kind") in SCORE_KINDS,
            where,
            f"score {name!r} has unknown kind {spec.get('kind')!r}; known: {SCORE_KINDS}",
        )
        _require(isinstance(spec.get("output"), str), where, f"score {name!r} names no output")
        if spec["kind"] == "complexity":
            _require(
                spec.get("compressor") in COMPRESSORS,
                where,
                f"score {name!r}: compressor must be one of {COMPRESSORS}",
            )
        if spec["kind"] == "difference":
            _require(
                isinstance(spec.get("minus_output"), str),
                where,
                f"score {name!r}: a difference needs 'minus_output'",
            )
        _require(
            spec.get("direction") == HIGHER_IS_ANOMALOUS,
            where,
            f"score {name!r}: direction must be '{HIGHER_IS_ANOMALOUS}'",
        )
        if spec.get("probability") is not None:
            try:
                ProbabilityMap.from_json(spec["probability"])
            except ValueError as error:
                msg = f"{where}: score {name!r}: {error}"
                raise BundleError(msg) from None
        ref = spec.get("reference")
        _require(isinstance(ref, list), where, f"score {name!r}: reference must be a list")
        if ref:
            array = np.asarray(ref, dtype=np.float64)
            _require(
                bool(np.all(np.isfinite(array))),
                where,
                f"score {name!r}: reference has non-finite values",
            )
            _require(
                bool(np.all(np.diff(array) >= 0)), where, f"score {name!r}: reference is not sorted"
            )
    _require(
        meta["default_score"] in scores,
        where,
        f"default_score {meta['default_score']!r} is not among the scores {list(scores)}",
    )

    try:
        check_alpha(meta["calibration"].get("alpha"))
    except ValueError as error:
        msg = f"{where}: calibration alpha: {error}"
        raise BundleError(msg) from None

    heatmap = meta.get("heatmap")
    if heatmap is not None:
        size = inp["channels"] * inp["height"] * inp["width"]
        _require(isinstance(heatmap.get("output"), str), where, "heatmap names no output")
        for key in ("mean", "std"):
            values = heatmap.get(key)
            _require(
                values is None or len(values) == size,
                where,
                f"heatmap {key} must hold channels*height*width = {size} values",
            )
