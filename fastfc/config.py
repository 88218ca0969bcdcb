"""Run configs: nested dataclasses, read from TOML, overridden with ``--set section.key=value``.

Each component owns a small dataclass (``TrainConfig`` in :mod:`fastfc.train_config`, the encoder,
teacher, data and objective sections of ``distill`` in :mod:`fastfc.distill_config`, those of
``features``, ``probe`` and ``eval`` in :mod:`fastfc.stage_config`, CIFAR's in
:mod:`fastfc.cifar.config`); a run config nests them by section. Every command names the same
concept the same way (docs/architecture.md, "Config sections and keys"): ``[encoder] name``,
``[teacher] pretrained|weights``, ``[data] workers|batch_size``, ...

Here, for every command: the one loader (:func:`load`: the TOML file, then the command's flags,
then ``--set``); the older key names still accepted (:data:`RENAMED`, :func:`upgrade`: one note
naming the new key); typed fields with their choices, help and flag (:func:`option`,
:func:`check_choices`, :func:`flag_fields`, from which ``fastfc.cli`` derives the flags).
Validation lives in the dataclasses; errors name the key and say what is accepted.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
import sys
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


# ----------------------------------------------------------------------------- typed fields

def option(default: Any = dataclasses.MISSING, *, choices: tuple | None = None, help: str = "",
           flag: str | None = None, **flag_kw) -> Any:
    """A config field (``dataclasses.field``) with its metadata: ``choices`` (the accepted values,
    checked by :func:`check_choices`), ``help`` (one line) and ``flag`` (its command-line name, e.g.
    ``"--batch-size"``: ``fastfc.cli`` derives the option from the field's type and this metadata).
    ``flag_kw`` are the flag's extras: ``path=True`` (read as a path), ``minimum`` (an integer at
    least this), ``group`` (flags of one section sharing a group are mutually exclusive),
    ``metavar``, ``nargs``, ``action``. A list or dict default is copied per instance."""
    metadata: dict = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if flag is not None:
        metadata["flag"], metadata["flag_kw"] = flag, dict(flag_kw)
    elif flag_kw:
        raise TypeError(f"flag extras {sorted(flag_kw)} need a flag")
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_choices(obj, section: str = "") -> None:
    """Refuse a field of dataclass ``obj`` whose value is not among its ``choices`` metadata
    (:func:`option`). Raises ``ValueError``: "``<section><name>`` must be one of a, b, got 'c'"."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(obj, f.name) not in choices:
            raise ValueError(f"{section}{f.name} must be one of {', '.join(map(str, choices))}, "
                             f"got {getattr(obj, f.name)!r}")


def flag_fields(cls: type, where: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dotted key, field, type hint)`` of every field of dataclass ``cls`` (nested sections
    included, in field order) that has a ``flag`` (:func:`option`): the command's flags."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += flag_fields(hints[f.name], f"{where}{f.name}.")
        elif "flag" in f.metadata:
            found.append((f"{where}{f.name}", f, hints[f.name]))
    return found


# ----------------------------------------------------------------------------- older key names

_STAGE_RENAMES = {"extract.batch_size": "data.batch_size", "extract.workers": "data.workers"}
# Older key -> its name now, per command (the commands' config classes name theirs in COMMAND).
RENAMED: dict[str, dict[str, str]] = {
    "distill": {"model.arch": "encoder.name", "model.student_seed": "encoder.seed", "model.init": "encoder.init",
                "model.teacher_pretrained": "teacher.pretrained", "model.teacher_weights": "teacher.weights",
                "data.num_workers": "data.workers"},
    "features": _STAGE_RENAMES, "probe": _STAGE_RENAMES, "eval": _STAGE_RENAMES,
    "cifar": {"data.num_workers": "data.workers"},
}
_NOTED: set[str] = set()


def _note(line: str) -> None:
    """Print ``note: <line>`` on stderr once per process, and only in the first process of a run
    (rank 0: torchrun's other ranks read the same config)."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    if line not in _NOTED and rank.strip() in ("", "0"):
        print(f"note: {line}", file=sys.stderr, flush=True)
    _NOTED.add(line)


def _in_toml(key: str) -> str:
    section, _, name = key.rpartition(".")
    return f"[{section}] {name}" if section else name


def _pop(data: dict, key: str) -> tuple[bool, Any]:
    """Remove dotted ``key`` from ``data``: ``(found, value)``; a section left empty goes too."""
    *parents, leaf = key.split(".")
    nodes = [data]
    for p in parents:
        if not isinstance(nodes[-1].get(p), dict):
            return False, None
        nodes.append(nodes[-1][p])
    if leaf not in nodes[-1]:
        return False, None
    value = nodes[-1].pop(leaf)
    for parent, p, node in zip(reversed(nodes[:-1]), reversed(parents), reversed(nodes[1:])):
        if not node:
            del parent[p]
    return True, value


def upgrade(data: dict, command: str | None, source: str | None = None) -> dict:
    """Rename the older keys of ``command``'s config (:data:`RENAMED`) in nested dict ``data``, in
    place, and return it. ``source`` (a file's name) gets one note per older key naming the new
    one; ``None`` renames quietly (a checkpoint's saved config).

    Raises:
        ConfigError: an older key and its new name both given, with different values.
    """
    for old, new in RENAMED.get(command, {}).items():
        found, value = _pop(data, old)
        if not found:
            continue
        there, current = _pop(copy.deepcopy(data), new)  # a copy: only looked at
        if there and current != value:
            raise ConfigError(f"{_in_toml(old)} = {value!r} and {_in_toml(new)} = {current!r} disagree; "
                              f"drop {_in_toml(old)} (now {_in_toml(new)})")
        set_key(data, new, value)
        if source is not None:
            _note(f"{source}: {_in_toml(old)} is now {_in_toml(new)}")
    return data


def old_name(new: str, renamed: dict[str, str]) -> str:
    """The older key(s) of ``new`` in ``renamed`` (old -> new), joined by " or "."""
    return " or ".join(old for old, n in renamed.items() if n == new)


def upgrade_overrides(overrides: list[str], command: str | None) -> list[str]:
    """``--set`` items with older keys (:data:`RENAMED`) renamed, one note each.

    Raises:
        ConfigError: an older key and its new name both set, to different values.
    """
    renamed = RENAMED.get(command, {})
    out, given = [], {}
    for item in overrides:
        key, eq, text = item.partition("=")
        name = key.strip()
        if not eq:  # malformed: apply_overrides names it
            out.append(item)
            continue
        new, value = renamed.get(name, name), _parse_value(text.strip())
        if new != name:
            _note(f"--set {name} is now {new}")
        if new in given and given[new][0] != name and given[new][1] != value:
            raise ConfigError(f"--set {given[new][0]}={given[new][2]} and --set {name}={text.strip()} disagree "
                              f"({old_name(new, renamed)} is now {new}); give {new} once")
        given[new] = (name, value, text.strip())
        out.append(f"{new}={text}")
    return out


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
    Older key names of the command (``cls.COMMAND``, :data:`RENAMED`) in the file or in ``--set``
    are accepted, each with one note on stderr naming the new key (:func:`upgrade`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: bad TOML, or an unknown key or bad value in the file (the message names the
            file and the key), or in a flag or override (it names the key); an older key and its
            new name given with different values.
    """
    command = getattr(cls, "COMMAND", None)
    data = read(path)
    if path is not None:
        try:
            upgrade(data, command, str(path))
            from_dict(cls, copy.deepcopy(data))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for key, value in (flags or {}).items():
        set_key(data, key, _plain(value))
    return from_dict(cls, apply_overrides(data, upgrade_overrides(list(overrides), command)))


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
