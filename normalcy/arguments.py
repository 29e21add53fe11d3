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


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states each option's default, like argparse's ArgumentDefaultsHelpFormatter, but
    only where there is one to state: not for flags (False) or options whose default is None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text.strip()


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help states every default."""
    return sub.add_parser(name, formatter_class=DefaultsFormatter, **kwargs)


def load_classes(spec: str, wanted: list[int] | None):
    """The data set a spec names (detectors.sources.load), cut to the `wanted` classes when given,
    which its source then names."""
    from dataclasses import replace

    from detectors.sources import load

    data = load(spec)
    if not wanted:
        return data
    return replace(data.with_classes(wanted), source=f"{data.source} classes {wanted}")
