"""normalcy's runtime core: ONNX bundle -> raw scores -> calibrated scores -> decisions.

Imports numpy, onnxruntime, scikit-learn and Pillow; never torch, never a web framework.
"""

from .bundle import Bundle, write_bundle
from .calibration import conformal_p_values, conformal_threshold
from .detector import Detector, ScoreResult
from .errors import BundleError, InputError

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "BundleError",
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
