"""Run configs: nested dataclasses, read from TOML, overridden with ``--set section.key=value``.

Each component owns a small dataclass (``TrainConfig`` in :mod:`fastfc.train_config`, the model,
data and objective configs in :mod:`fastfc.distill`, those of ``features``, ``probe`` and ``eval``
in :mod:`fastfc.stage_config`); a run config nests them by section.
Validation lives in the dataclasses; errors name the key and say what is accepted.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's fields."""


def _parse_value(text: str) -> Any:
    """``--set`` values: Python/TOML-like literals (1e-3, true, [1, 2], "x"), else the raw string."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


_SIMPLE = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(key: str, hint, value) -> None:
    """Refuse a value of the wrong simple type (``train.lr=abc``), naming the key. Optional simple
    types accept None; other hints (tuples, nested configs) are left to the dataclass."""
    allowed = [t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)]
    if len(allowed) != 1 or allowed[0] not in _SIMPLE or value is None and type(None) in typing.get_args(hint):
        return
    want = allowed[0]
    ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_SIMPLE[want]}, got {value!r}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict. Raises :class:`ConfigError` on unknown keys.

    A dataclass may rename keys of older configs with a static ``migrate_keys(data) -> data``."""
    if hasattr(cls, "migrate_keys"):
        try:
            data = cls.migrate_keys(data)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"{where.rstrip('.') or 'top level'} accepts: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if value == "" and type(None) in typing.get_args(hint):
            value = None  # TOML has no null: an empty string unsets an optional value
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):  # `model = "RN50"` or --set model=RN50: a section, not a value
                raise ConfigError(f"{where}{name} is a section ([{where}{name}] in TOML, --set {where}{name}.KEY=VALUE), "
                                  f"not a value; got {value!r}")
            value = from_dict(hint, value, f"{where}{name}.")
        elif float in (typing.get_args(hint) or (hint,)) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # also for optional numbers: wd = 0
        _check_type(f"{where}{name}", hint, value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {e}") from None


def set_key(data: dict, key: str, value: Any, what: str | None = None) -> dict:
    """Set ``section.key`` of a nested dict to ``value`` (in place) and return it. ``what`` names the
    setting in the error (default: the key). Raises :class:`ConfigError` when a parent is no section."""
    node = data
    *parents, leaf = key.strip().split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what or key}: {p} is not a section")
    node[leaf] = value
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        key, text = item.split("=", 1)
        set_key(data, key, _parse_value(text.strip()), f"--set {item!r}")
    return data


def read(path: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """Read ``path`` (TOML, optional) and apply ``overrides``: the nested dict, not yet checked
    against a config class (so it needs none of the modules that define them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: bad TOML or a malformed override (named).
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file (see launch/configs/)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
    return apply_overrides(data, list(overrides))


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] = (), *,
         flags: dict | None = None) -> T:
    """``cls`` from the TOML at ``path`` (optional), then ``flags`` (``{"section.key": value}``, a
    command's shorthands; paths may be ``Path``), then ``overrides`` (``--set section.key=value``);
    a later source wins. Every command's config is read so (distill, features, probe, eval).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: bad TOML, or an unknown key or bad value in the file (the message names the
            file and the key), or in a flag or override (it names the key).
    """
    data = read(path)
    if path is not None:
        try:
            from_dict(cls, copy.deepcopy(data))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for key, value in (flags or {}).items():
        set_key(data, key, _plain(value))
    return from_dict(cls, apply_overrides(data, list(overrides)))


def _plain(value):
    """A flag's value as TOML would give it: paths as strings, sequences as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(obj) -> dict:
    """The resolved config as plain data (saved beside the metrics)."""
    return dataclasses.asdict(obj)
