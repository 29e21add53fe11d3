"""The named exceptions of the runtime core. All are ValueErrors: bad input, said plainly.

`NotFittedError` is scikit-learn's own (the estimators raise it through scikit-learn's checks); it
is imported on first use, so loading a bundle and scoring do not pay for importing scikit-learn.
"""


class BundleError(ValueError):
    """A detector bundle is unreadable, of an unknown version, or inconsistent with its graph."""


class InputError(ValueError):
    """Images or scores given to a detector are not what it accepts."""


class UnsupportedImageFormat(InputError):
    """An encoded image in a format outside the accepted ones (EPS, GIF, ...)."""


class MultiFrameImage(InputError):
    """An encoded image with several frames or pages (multi-page TIFF, animated PNG)."""


def __getattr__(name: str):
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError

        return NotFittedError
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [  # noqa: F822 (NotFittedError is provided by __getattr__)
    "BundleError",
    "InputError",
    "MultiFrameImage",
    "NotFittedError",
    "UnsupportedImageFormat",
]  # noqa: F822 (provided by __getattr__)
