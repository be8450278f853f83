"""Names, errors and small helpers shared by the exporters."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketswap.core.errors import PocketswapError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Format:
    """One artifact format: file suffix, tensor layout, and whether it is converted from the ONNX graph
    (then int8 needs calibration crops; CoreML converts the PyTorch module and compresses weights instead)."""

    name: str
    suffix: str
    layout: str
    from_onnx: bool

    def path(self, folder: Path, stem: str, precision: str, tag: str = "") -> Path:
        """``folder/STEM_PRECISION[TAG]SUFFIX``: the one naming rule of every artifact."""
        return folder / f"{stem}_{precision}{tag}{self.suffix}"


FORMAT_TABLE = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", "NCHW", from_onnx=True),
        Format("tflite", ".tflite", "NHWC", from_onnx=True),
        Format("coreml", ".mlpackage", "NCHW", from_onnx=False),
    )
}
FORMATS = tuple(FORMAT_TABLE)


def needs_onnx(formats: list[str]) -> bool:
    """Whether any of ``formats`` is converted from the ONNX graph."""
    return any(FORMAT_TABLE[f].from_onnx for f in formats)


COMPRESSIONS = ("none", "int8", "palettize6", "palettize4")


class ExportError(PocketswapError):
    """A conversion failed or produced an artifact that is not usable."""


class UnsupportedError(ExportError):
    """A layer, op, precision or option cannot be exported to the requested format (the message says which and why)."""


class ParityError(ExportError):
    """An artifact's outputs differ from PyTorch by more than the precision's tolerance."""


class CalibrationError(PocketswapError):
    """int8 calibration data is missing, unreadable or contains no usable face crops."""


def parse_list(value: str | list[str] | tuple[str, ...], choices: tuple[str, ...], what: str) -> list[str]:
    """``"fp32,fp16"`` / ``["fp32", "fp16"]`` / ``"all"`` -> validated list in ``choices`` order."""
    from pocketswap.core.cli_args import list_values

    items = [v.lower() for v in list_values(value)]
    if "all" in items:
        return list(choices)
    unknown = [v for v in items if v not in choices]
    if unknown:
        raise UnsupportedError(f"{what} '{unknown[0]}' is not supported; choose from {', '.join(choices)} (or all)")
    if not items:
        raise UnsupportedError(f"no {what} given; choose from {', '.join(choices)}")
    return [c for c in choices if c in items]


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, then raise it: third-party imports (TensorFlow's) may swallow a
    KeyboardInterrupt raised inside them and carry on, and the user's Ctrl-C would be lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def captured_output(what: str, failure_level: int = logging.ERROR) -> Iterator[io.StringIO]:
    """Silence a chatty converter (Python-level stdout/stderr and the C-level fds); log it at DEBUG.

    On an exception the last lines are logged at ``failure_level`` so the failing layer stays visible.
    """
    buffer = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as raw:
        saved = []
        for fd in (1, 2):
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush() if fd == 1 else sys.stderr.flush()
                saved.append((fd, os.dup(fd)))
                os.dup2(raw.fileno(), fd)
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                yield buffer
        except BaseException:
            _restore(saved)
            text = _collect(buffer, raw)
            buffer.seek(0)
            buffer.truncate()
            buffer.write(text)  # the caller may inspect the whole output after the exception
            log.log(failure_level, "%s output (last lines):\n%s", what, "\n".join(text.splitlines()[-25:]))
            raise
        _restore(saved)
        log.debug("%s output:\n%s", what, _collect(buffer, raw))


def _restore(saved: list[tuple[int, int]]) -> None:
    while saved:
        fd, copy = saved.pop()
        os.dup2(copy, fd)
        os.close(copy)


def _collect(buffer: io.StringIO, raw) -> str:
    raw.flush()
    raw.seek(0)
    text = raw.read().decode(errors="replace")
    raw.seek(0)
    raw.truncate()
    return buffer.getvalue() + text
