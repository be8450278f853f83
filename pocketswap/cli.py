"""The `pocketswap` command line. Each stage registers its subcommands from its own `cli.py`,
which stays a thin layer over the stage's library API (heavy imports happen inside handlers)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pocketswap import __version__
from pocketswap.errors import PocketswapError

# Stage modules that expose `register(subparsers)`; order is the order shown in --help.
STAGE_CLIS = (
    "pocketswap.faces.cli",
    "pocketswap.teacher.cli",
    "pocketswap.student.cli",
    "pocketswap.distill.cli",
    "pocketswap.export.cli",
    "pocketswap.benchmarks.cli",
    "pocketswap.demo.cli",
    "pocketswap.quickstart",
)

log = logging.getLogger("pocketswap")

# Crop sizes a command accepts (a 100000 px crop would try to allocate ~30 GB).
MIN_CROP, MAX_CROP = 16, 1024


def int_range(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (high None: no upper bound), else one clear line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def output_file(*suffixes: str):
    """An argparse type: a file path that can be written (checked at parse time, before any work)."""
    from pocketswap.errors import OutputError
    from pocketswap.files import check_output

    def parse(text: str) -> str:
        try:
            check_output(text, suffixes or None, "path", create=False)
        except OutputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = "output file"
    return parse


def output_dir(text: str) -> str:
    """An argparse type: a folder that exists or can be created, and written."""
    from pocketswap.errors import OutputError
    from pocketswap.files import check_output_dir

    try:
        check_output_dir(text, "folder", create=False)
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketswap",
        description="Distil real-time face-swap students and export them to CoreML, TFLite and ONNX.",
    )
    parser.add_argument("--version", action="version", version=f"pocketswap {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # FIELD=VALUE overrides may also follow options (`personalize RUN --out D lr=1e-3`)
    if (
        extra
        and isinstance(getattr(args, "overrides", None), list)
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 1
    try:
        result = args.handler(args)
    except PocketswapError as exc:
        print(f"pocketswap: error: {exc}", file=sys.stderr)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:  # an output path
        print(f"pocketswap: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pocketswap: interrupted; finished work is kept", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
