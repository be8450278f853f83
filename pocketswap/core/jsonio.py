"""The one reader of the JSON files pocketswap opens (manifests, checkpoint configs, dataset manifests,
reports, baselines, ``metrics.jsonl``): bounded, decoded strictly and typed by a small schema.

:func:`read_json` reads at most ``max_bytes`` (a larger file is refused before it is read), decodes UTF-8
strictly (invalid bytes are named with their offset), parses with the standard library and refuses
nesting deeper than ``max_depth`` (brackets 100,000 deep end in Python's ``RecursionError`` inside the
parser; that is caught and said too), numbers of more digits than Python converts, and anything else
``json`` refuses, each as one line naming the file. :func:`read_jsonl` reads a JSON-lines log: a last
line cut off by an interrupted writer (no newline after it, not valid JSON) is skipped with a warning,
corruption anywhere else is refused. :func:`check_schema` checks the types of the fields a reader uses
and names the first wrong one (``field 'inputs[0].shape[2]' must be a whole number, got 'x'``).

A schema is built of:

- ``str``, ``int`` (whole numbers; not true/false), ``float`` (any number; not true/false), ``bool``,
  ``dict`` (any object), ``list`` (any list), ``None`` (null);
- a tuple of those: any one of them (``(str, None)``: a string or null);
- ``[spec]``: a list whose items are each ``spec``;
- ``{"name": spec, ...}``: an object whose listed fields, where present, are each their ``spec``;
- :class:`Obj`: the same with ``required`` fields, ``closed`` (other keys are refused) and ``values``
  (the spec of every value: a map such as ``{"Conv": 33}``).
"""

from __future__ import annotations

import json
import logging
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketswap.core.errors import PocketswapError

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 20  # no JSON file pocketswap writes comes near this (a manifest with its texture: ~100 kB)
MAX_JSONL_BYTES = 256 << 20  # a training log: ~200 bytes a line
MAX_DEPTH = 64  # the deepest file pocketswap writes nests 7 levels


class JSONFileError(PocketswapError):
    """A JSON file is missing, too big, not UTF-8, not JSON, nested too deeply or of the wrong shape."""


@dataclass(frozen=True)
class Obj:
    """An object's schema: ``fields`` (checked where present), ``required`` fields, ``closed`` (refuse keys
    not in ``fields``), ``values`` (the spec of every value not in ``fields``)."""

    fields: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    closed: bool = False
    values: Any = None


def read_json(
    path: str | Path,
    what: str = "JSON file",
    *,
    error: type[PocketswapError] = JSONFileError,
    schema: Any = None,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """The parsed JSON of the file ``path`` (``what`` names it in errors, raised as ``error``), checked
    against ``schema`` (:func:`check_schema`) when one is given."""
    path = Path(path)
    where = f"{what} {path}"
    data = parse_json(_read_bounded(path, where, error, max_bytes), where, error=error, max_depth=max_depth)
    if schema is not None:
        check_schema(data, schema, where, error=error)
    return data


def parse_json(
    text: str | bytes,
    where: str = "JSON",
    *,
    error: type[PocketswapError] = JSONFileError,
    max_depth: int = MAX_DEPTH,
    max_bytes: int = MAX_BYTES,
) -> Any:
    """The parsed JSON of ``text`` (bytes must be UTF-8), with the bounds of :func:`read_json`; ``where``
    names it in errors (for JSON held inside another file, such as a shard member or a safetensors header)."""
    if len(text) > max_bytes:
        raise error(f"{where}: over the {_size(max_bytes)} limit (not a file pocketswap wrote)")
    if isinstance(text, bytes | bytearray):
        text = _decode(bytes(text), where, error)
    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"{where}: nested deeper than {max_depth} levels (not a file pocketswap wrote)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # a number of more digits than Python converts (4300 by default)
        digits = re.search(r"limit \((\d+) digits\).*has (\d+) digits", str(exc))
        reason = f"a number of {digits[2]} digits, over the {digits[1]} allowed" if digits else str(exc)[:120]
        raise error(f"{where}: not valid JSON ({reason})") from None
    if (depth := nesting_depth(data, max_depth)) > max_depth:
        raise error(f"{where}: nested deeper than {max_depth} levels ({depth} or more; not a file pocketswap wrote)")
    return data


def read_jsonl(
    path: str | Path,
    what: str = "JSON-lines log",
    *,
    error: type[PocketswapError] = JSONFileError,
    schema: Any = None,
    warn_cut: bool = True,
    max_bytes: int = MAX_JSONL_BYTES,
    max_depth: int = MAX_DEPTH,
) -> list[Any]:
    """The records of a JSON-lines file (blank lines skipped), each checked against ``schema`` when given.
    A last line that an interrupted writer cut off (not valid JSON and no newline after it) is skipped,
    with a warning (``warn_cut``); a bad line anywhere else is refused, naming its line number."""
    path = Path(path)
    where = f"{what} {path}"
    raw = _read_bounded(path, where, error, max_bytes)
    lines = raw.split(b"\n")
    cut = lines[-1].strip() != b""  # the file does not end with a newline: its last line may be cut off
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{where} line {number}", error=error, max_depth=max_depth)
        except PocketswapError:
            if cut and number == len(lines):
                (log.warning if warn_cut else log.debug)(
                    "%s: skipped its last line %d, cut off (an interrupted writer): %r",
                    where, number, line[:60].decode("utf-8", "replace"),
                )  # fmt: skip
                break
            raise
        if schema is not None:
            check_schema(record, schema, f"{where} line {number}", error=error)
        records.append(record)
    return records


def nesting_depth(data: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply lists and objects nest in ``data`` (a scalar: 0), counted without recursion; the count
    stops just past ``limit``."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return deepest


def check_schema(data: Any, schema: Any, where: str, *, error: type[PocketswapError] = JSONFileError) -> Any:
    """``data`` when it fits ``schema`` (see the module's docstring), else ``error`` naming the first
    field that does not: ``{where}: field 'parity.max_abs' must be a number, got 'x'``."""
    problem = _mismatch(data, schema, "")
    if problem is not None:
        name, message = problem
        raise error(f"{where}: field '{name}' {message}" if name else f"{where} {message}")
    return data


# -- internals ---------------------------------------------------------------------------------------------
# The evaluation report ``distill eval`` and ``distill personalize`` write (``RUN/eval.json``): system -> figures.
EVAL_REPORT = Obj({"metrics": Obj(values=dict)}, required=("metrics",))


def read_eval_report(path: str | Path) -> dict[str, Any]:
    """A run's evaluation report (:data:`EVAL_REPORT`), the one reader the CLI, the app and its jobs use."""
    return read_json(path, "eval report", schema=EVAL_REPORT)


_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "an object",
          list: "a list", None: "null", type(None): "null"}  # fmt: skip


def _read_bounded(path: Path, where: str, error: type[PocketswapError], max_bytes: int) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        raise error(f"{where}: {reason}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{where}: is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise error(f"{where}: not a regular file")
    if info.st_size > max_bytes:
        raise error(f"{where}: {_size(info.st_size)}, over the {_size(max_bytes)} limit (not a file pocketswap wrote)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{where}: unreadable ({exc.strerror or exc})") from None
    if len(data) > max_bytes:  # it grew while we looked
        raise error(f"{where}: over the {_size(max_bytes)} limit (not a file pocketswap wrote)")
    return data


def _decode(data: bytes, where: str, error: type[PocketswapError]) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); not a file pocketswap wrote"
        ) from None
    return text.removeprefix("\ufeff")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MB" if n >= 1 << 20 else f"{n} bytes"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits(value: Any, kind: Any) -> bool:
    if kind is None or kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(schema: Any) -> str:
    if isinstance(schema, tuple):
        return " or ".join(_describe(s) for s in schema)
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, dict | Obj):
        return "an object"
    return _NAMES.get(schema, getattr(schema, "__name__", str(schema)))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mismatch(value: Any, schema: Any, path: str) -> tuple[str, str] | None:
    """(field, what is wrong) for the first place ``value`` does not fit ``schema``; None when it fits."""
    if isinstance(schema, tuple):
        for option in schema:
            if _mismatch(value, option, path) is None:
                return None
        nested = [s for s in schema if isinstance(s, list | dict | Obj) and _fits_shape(value, s)]
        if nested:  # the right container with a wrong item: name the item
            return _mismatch(value, nested[0], path)
        return path, f"must be {_describe(schema)}, got {_show(value)}"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return path, f"must be a list, got {_show(value)}"
        for i, item in enumerate(value):
            if (problem := _mismatch(item, schema[0], f"{path}[{i}]")) is not None:
                return problem
        return None
    if isinstance(schema, dict):
        schema = Obj(schema)
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            return path, f"must be an object, got {_show(value)}"
        for name in schema.required:
            if name not in value:
                return _join(path, name), "is missing"
        for key, item in value.items():
            if key in schema.fields:
                spec = schema.fields[key]
            elif schema.closed:
                known = ", ".join(schema.fields)
                return _join(path, str(key)[:40]), f"is not a field here (known: {known})"
            elif schema.values is not None:
                spec = schema.values
            else:
                continue
            if (problem := _mismatch(item, spec, _join(path, key))) is not None:
                return problem
        return None
    if not _fits(value, schema):
        return path, f"must be {_describe(schema)}, got {_show(value)}"
    return None


def _fits_shape(value: Any, schema: Any) -> bool:
    return isinstance(value, list) if isinstance(schema, list) else isinstance(value, dict)


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_JSONL_BYTES",
    "JSONFileError",
    "Obj",
    "check_schema",
    "nesting_depth",
    "parse_json",
    "read_json",
    "read_jsonl",
]
