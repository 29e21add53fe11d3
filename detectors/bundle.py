"""The detector bundle: one ONNX file whose `metadata_props` carry versioned JSON.

Everything a server needs besides the graph travels under the key `normalcy`, read into the typed
records of `spec.py` (BundleSpec and its parts, which document each field). A bundle whose metadata
is missing, of another version, or inconsistent with itself is refused here with a BundleError;
one inconsistent with its graph is refused when a session opens it (runtime.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError
from .onnxfile import read_metadata_props, with_metadata_props
from .spec import BundleSpec

METADATA_KEY = "normalcy"


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk: the model bytes, their sha256 and the validated metadata."""

    model_bytes: bytes
    sha256: str
    spec: BundleSpec
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
            document = json.loads(props[METADATA_KEY])
            spec = BundleSpec.from_json(document)
        except json.JSONDecodeError as error:
            msg = f"{where}: metadata is not valid JSON ({error})"
            raise BundleError(msg) from None
        except BundleError as error:
            msg = f"{where}: {error}"
            raise BundleError(msg) from None
        return cls(data, hashlib.sha256(data).hexdigest(), spec, path)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def version(self) -> str:
        """A short content hash: two bundles with the same bytes have the same version."""
        return self.sha256[:12]

    def score_names(self) -> list[str]:
        return self.spec.score_names

    def reference(self, score: str) -> np.ndarray:
        return np.asarray(self.spec.scores[score].reference, dtype=np.float64)

    def is_calibrated(self) -> bool:
        return self.spec.is_calibrated()


def write_bundle(model_bytes: bytes, spec: BundleSpec, path: str | Path) -> Bundle:
    """Store `spec` in the model bytes and write the file atomically; the bundle as a reader of
    the file sees it (its scores in the file's order)."""
    document = json.dumps(spec.to_json(), sort_keys=True)
    data = with_metadata_props(model_bytes, {METADATA_KEY: document})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return Bundle.from_bytes(data, path=str(path))
