"""Dataclass configs loaded from dicts/YAML with validation that names the offending field (shared by every stage)."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pocketswap.core.errors import ConfigError

T = TypeVar("T")


def _shown(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut at ``limit`` characters (a client's value may be long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` checked against type `hint` (unions, nested dataclasses, tuples, dicts, scalars);
    raises ConfigError naming field `name`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(name, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config field '{name}': invalid value {_shown(value)}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{name}' must be a mapping, got {_shown(value)}")
        return from_dict(hint, value, prefix=f"{name}.")
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, str) and args == (str, Ellipsis):  # "a,b,c" from a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{name}' must be a list, got {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config field '{name}' must have {len(args)} values, got {_shown(list(value))}")
        return tuple(coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{name}' must be a mapping, got {_shown(value)}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{name}' must be true or false, got {_shown(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():  # 1e5 from YAML, 1e9 from JSON: a whole number
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{name}' must be an integer, got {_shown(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{name}' must be a number, got {_shown(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"config field '{name}' must be finite, got {_shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field '{name}' must be a string, got {_shown(value)}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, type-checking each field; unknown keys are errors.
    The instance's own `validate()` (if any) runs from `__post_init__`."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config {prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0].replace("-", "_"), sorted(names), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known fields: {', '.join(sorted(names))}"
        raise ConfigError(f"unknown config field '{prefix}{unknown[0]}'{hint}")
    values = {key: coerce(prefix + key, value, hints[key]) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        if prefix and "'" in str(exc):
            raise ConfigError(str(exc).replace("field '", f"field '{prefix}", 1)) from exc
        raise


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a (nested) dataclass config; tuples become lists."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def yaml_safe_load(text: str) -> Any:
    """``yaml.safe_load`` that also reads YAML 1.2 numbers such as ``2e-3`` and ``1e5`` as floats
    (PyYAML follows YAML 1.1, where they are strings); every config file and override is read with it."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError on a missing file or bad syntax."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --config takes a YAML file")
    try:
        data = yaml_safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (YAML) file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ConfigError naming `name` unless low <= value <= high."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"config field '{name}' must be in {bounds}, got {_shown(value)}")


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment variables; (0, 1) when not set."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE must be integers ({exc})") from exc
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"invalid RANK={rank} for WORLD_SIZE={world}")
    return rank, world


def config_field(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its help text (and allowed values): the CLI's flags are made from these."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar/list (``2e-3`` -> 0.002, ``true`` -> True, ``[a, b]``)."""
    import yaml

    try:
        return yaml_safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """The one ``field=value`` grammar: ``["lr=2e-3", "student.size=64"]`` -> ``{"lr": 0.002, "student":
    {"size": 64}}`` (values read as YAML scalars/lists; a dotted key sets a sub-field)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like field=value")
        value = parse_value(text)
        if "." in key:
            head, sub = key.split(".", 1)
            out.setdefault(head, {})
            if not isinstance(out[head], dict):
                raise ConfigError(f"config field '{head}' is not a mapping")
            out[head][sub] = value
        else:
            out[key] = value
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on ``base``, mapping fields merged key by key (``student.size=64`` keeps the other
    student fields)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def coerce_fields(config: Any) -> None:
    """Check (and normalise: lists to tuples, ints to floats) every field of the dataclass ``config`` against
    its type hint, in place (frozen dataclasses too); ConfigError names the first bad field."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        object.__setattr__(config, f.name, coerce(f.name, getattr(config, f.name), hints[f.name]))


class Config:
    """Base of every dataclass config: built from dicts (:func:`from_dict`, types checked, unknown fields
    named with the closest known one), YAML files and ``field=value`` overrides in one order (defaults <
    base < ``--config FILE`` < flags and overrides), and written back as plain data. A subclass's
    ``validate()`` (called from its ``__post_init__``) checks ranges and choices."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        return from_dict(cls, data)

    @classmethod
    def load(
        cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: dict | None = None
    ) -> T:
        """``base``, then the YAML file at ``path``, then ``overrides`` (None values ignored); validated, with
        an error in the file named by its path."""
        data = merge(dict(base or {}), load_yaml(path) if path else {})
        data = merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return from_dict(cls, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}" if path else str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON data (nested configs as mappings, tuples as lists)."""
        return to_dict(self)

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with some fields changed; an unknown field is an error."""
        return from_dict(type(self), {**to_dict(self), **changes})

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)
