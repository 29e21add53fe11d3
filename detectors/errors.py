"""The named exceptions of the runtime core. Both are ValueErrors: bad input, said plainly.

`NotFittedError` is scikit-learn's own (the estimators raise it through scikit-learn's checks); it
is imported on first use, so loading a bundle and scoring do not pay for importing scikit-learn.
"""


class BundleError(ValueError):
    """A detector bundle is unreadable, of an unknown version, or inconsistent with its graph."""


class InputError(ValueError):
    """Images or scores given to a detector are not what it accepts."""


def __getattr__(name: str):
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError

        return NotFittedError
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = ["BundleError", "InputError", "NotFittedError"]  # noqa: F822 (provided by __getattr__)
