"""Argument types shared by the subcommands: they turn the library's InputError into argparse's
message, so a bad value is reported like any other bad argument."""

from __future__ import annotations

import argparse


def classes(text: str) -> list[int] | None:
    """'0,1,7' -> [0, 1, 7]."""
    from detectors.sources import parse_classes

    try:
        return parse_classes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def alpha(text: str) -> float:
    """A false-positive rate in (0, 1)."""
    from detectors.calibration import check_alpha

    try:
        return check_alpha(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
