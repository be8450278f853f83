"""The command-line grammar every stage's CLI shares: config dataclass fields as ``--field-name`` flags (help
with type, allowed values and default), the list grammar, and argparse types checked at parse time."""

from __future__ import annotations

import argparse

# Crop sizes a command accepts (a 100000 px crop would try to allocate ~30 GB).
MIN_CROP, MAX_CROP = 16, 1024


def add_config_flags(
    parser: argparse.ArgumentParser, config_class: type, *, types: dict | None = None, skip: tuple[str, ...] = ()
) -> None:
    """One ``--field-name`` flag per field of the dataclass config ``config_class`` (help text and allowed
    values from :func:`pocketswap.core.config.config_field`); read them back with :func:`config_flags`.
    ``types``: argparse types for fields checked at parse time (e.g. an output folder)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_class)
    names = {int: "INT", float: "FLOAT", bool: "BOOL", str: "TEXT", str | None: "TEXT"}
    group = parser.add_argument_group("config fields (override --config)")
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = "none" if default in ("", None) else default
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"cfg_{f.name}",
            metavar=names.get(hints.get(f.name), "VALUE"),
            type=(types or {}).get(f.name),
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} (default: {shown})",
        )


def config_flags(args: argparse.Namespace, config_class: type) -> dict:
    """The config fields given as flags: text parsed as YAML values (``2e-3``, ``true``, ``[a, b]``)
    except for plain-text fields, which keep the text as typed (a folder named ``2024``)."""
    import typing

    from pocketswap.core.config import parse_value

    hints = typing.get_type_hints(config_class)
    given = {name[4:]: value for name, value in vars(args).items() if name.startswith("cfg_") and value is not None}
    return {
        name: parse_value(value) if isinstance(value, str) and hints.get(name) not in (str, str | None) else value
        for name, value in given.items()
    }


def list_values(values: str | list[str] | tuple[str, ...]) -> list[str]:
    """The one list grammar of every command: values separated by spaces (``nargs="+"``), commas or both
    (``--format onnx tflite`` = ``--format onnx,tflite``)."""
    items = [values] if isinstance(values, str) else list(values)
    return [v.strip() for item in items for v in str(item).split(",") if v.strip()]


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
    from pocketswap.core.errors import OutputError
    from pocketswap.core.files import check_output

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
    from pocketswap.core.errors import OutputError
    from pocketswap.core.files import check_output_dir

    try:
        check_output_dir(text, "folder", create=False)
    except OutputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_switch_flags(parser: argparse.ArgumentParser, config_class: type, aliases: dict | None = None) -> None:
    """Switch-style flags for the dataclass config ``config_class``: a bool field that defaults to true gets
    ``--no-NAME``, one that defaults to false ``--NAME``, any other ``--NAME VALUE`` (help text and default
    from :func:`pocketswap.core.config.config_field`; ``aliases``: more option strings per field). Read them
    back with :func:`switch_values`; the config itself checks the values."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        default, name, help_text = f.default, f.name.replace("_", "-"), f.metadata.get("help", "")
        extra = tuple((aliases or {}).get(f.name, ()))
        if hints[f.name] is bool:
            flag = f"--no-{name}" if default else f"--{name}"
            parser.add_argument(flag, *extra, dest=f"sw_{f.name}", action="store_const", const=not default,
                                help=f"turn off: {help_text}" if default else help_text)  # fmt: skip
        else:
            metavar = {int: "INT", float: "FLOAT"}.get(hints[f.name], "VALUE")
            parser.add_argument(f"--{name}", *extra, dest=f"sw_{f.name}", type=hints[f.name], metavar=metavar,
                                help=f"{help_text} (default: {default})")  # fmt: skip


def switch_values(args: argparse.Namespace) -> dict:
    """The fields given with :func:`add_switch_flags`' flags."""
    return {k[3:]: v for k, v in vars(args).items() if k.startswith("sw_") and v is not None}
