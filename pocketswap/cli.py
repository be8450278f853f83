"""The `pocketswap` command line: the shell above the stages. Each stage registers its subcommands from its
own `cli.py`, a thin layer over the stage's library API (heavy imports happen inside handlers) built with
the shared argument grammar of :mod:`pocketswap.core.cli_args`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pocketswap import __version__
from pocketswap.core.errors import PocketswapError

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


def _nested_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]] | None:
    """``export patch ...``: the subcommand's own parser and its arguments (top-level flags kept)."""
    first = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if first is None or argv[first : first + 2] != ["export", "patch"]:
        return None
    from pocketswap.export.cli import patch_parser

    return patch_parser(), argv[:first] + argv[first + 2 :]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    nested = _nested_parser(argv)
    parser, argv = nested if nested is not None else (build_parser(), argv)
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
    except OSError as exc:  # a path the OS refused (permission, name too long, disk full, ...): one line
        where = f"{str(exc.filename)[:120]}: " if exc.filename else ""
        print(f"pocketswap: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pocketswap: interrupted; finished work is kept", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
