"""The named exceptions of the runtime core. Both are ValueErrors: bad input, said plainly."""

from sklearn.exceptions import NotFittedError


class BundleError(ValueError):
    """A detector bundle is unreadable, of an unknown version, or inconsistent with its graph."""


class InputError(ValueError):
    """Images or scores given to a detector are not what it accepts."""


__all__ = ["BundleError", "InputError", "NotFittedError"]
