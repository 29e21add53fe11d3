"""The `normalcy` command: the one program that sees every package.

Each subcommand lives in the module of the package it drives (training_commands: train, report,
demo; bundle_commands: info, evaluate, calibrate; jobs_commands: score; service_commands: serve)
and imports that package only when it runs, so `normalcy serve` and `normalcy score` work in an
install without PyTorch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import bundle_commands, jobs_commands, service_commands, training_commands

COMMANDS = [
    training_commands.add_train,
    bundle_commands.add_info,
    bundle_commands.add_evaluate,
    training_commands.add_demo,
    jobs_commands.add_score,
    bundle_commands.add_calibrate,
    training_commands.add_quantize,
    service_commands.add_serve,
    training_commands.add_report,
]


class _Version(argparse.Action):
    """`--version`: the version that bundles record as their package_version."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from detectors import __version__

        print(f"normalcy {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normalcy",
        description="Anomaly detection with explicit density models (PixelCNN, VAE), served from "
        "one ONNX file.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from detectors.errors import BundleError, InputError

    try:
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the try, not at exit
        return code
    except (BundleError, InputError) as error:
        print(f"normalcy {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`normalcy info x.onnx | head`): stop quietly, as `cat` does. Point
        # stdout at /dev/null so that Python's flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
