"""normalcy's runtime core: ONNX bundle -> raw scores -> calibrated scores -> decisions.

    spec.py          the bundle's metadata as typed, frozen records (BundleSpec)
    bundle.py        one ONNX file: the graph and its metadata, read and written
    images.py        the input contract: InputSpec, the 0..255 pixel rule, image -> array
    sources/         the one set of readers: IDX, .npy, image folders, the bundled digits
    runtime.py       ONNX Runtime: the graph's outputs -> raw scores
    detector.py      Detector: raw scores -> conformal p-values -> decisions (ScoreResult)
    calibration.py   conformal p-values and thresholds, arrays only; drift.py, supervised.py
    estimator.py     the calibration as scikit-learn estimators; fitting.py applies them to bundles
    evaluation.py    detection quality on labelled images

The import rule: everything imports `detectors`; `detectors` imports numpy, onnxruntime,
scikit-learn and Pillow and nothing above it: never torch, never a web framework, never
`training`, `service`, `jobs` or `normalcy`.
"""

from .bundle import Bundle, write_bundle
from .calibration import conformal_p_values, conformal_threshold
from .detector import Detector, ScoreResult
from .errors import BundleError, InputError
from .spec import BundleSpec

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
    "BundleSpec",
    "Detector",
    "InputError",
    "NotFittedError",
    "ScoreResult",
    "conformal_p_values",
    "conformal_threshold",
    "write_bundle",
]


def __getattr__(name: str):
    if name == "NotFittedError":  # scikit-learn's, imported on first use (see errors.py)
        from .errors import NotFittedError

        return NotFittedError
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
