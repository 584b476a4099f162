"""Typed configuration: nested dataclasses, dotted overrides, validation, saving.

Every configurable part of lipstep is a dataclass whose fields carry type hints and defaults.
This module is the one place that turns strings (command-line overrides such as
``world.size=128``) or JSON (a saved ``config.json``) into those dataclasses, checking every key
and type on the way. Unknown keys and wrong types are `ConfigError`s with a "did you mean" hint;
nothing is dropped silently. A dataclass may define ``validate()`` for range checks.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from lipstep.errors import ConfigError
from lipstep.fsutil import write_json_atomic

C = TypeVar("C")

CONFIG_FILENAME = "config.json"


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_types(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the type hint `tp`, converting where it is lossless; raise otherwise."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        if value is None and "none" in args:  # `key=none` on the command line parses as None
            return "none"
        raise ConfigError(f"{key}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}"
                          + (_hint(str(value), [str(a) for a in args]) if isinstance(value, str) else ""))
    if origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
                items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
            else:
                inner = args[0] if args else Any
                items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key + ".")
        raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: unsupported value {value!r} for type {_type_name(tp)}")


def _parse_literal(text: str) -> Any:
    """Parse an override's value: Python/JSON literals, else the raw string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


SEED_MAX = 2**63 - 1  # torch generators take seeds below 2**64, numpy any non-negative one: one bound for all


def validate(cfg) -> None:
    """Run `validate()` on `cfg` and on every nested dataclass (children first). Every integer field named
    ``seed`` (or ``*_seed``) must lie in ``0..SEED_MAX``, what both torch and numpy generators accept."""
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        if dataclasses.is_dataclass(child):
            validate(child)
        elif (f.name == "seed" or f.name.endswith("_seed")) and isinstance(child, int):
            check(0 <= child <= SEED_MAX, f"{f.name} must be in 0..2**63-1, got {child}")
    hook = getattr(cfg, "validate", None)
    if callable(hook):
        hook()


def set_key(cfg, dotted: str, raw: Any, *, parse: bool = True) -> None:
    """Set `cfg.a.b = raw` after checking the key exists and the value has the declared type."""
    parts = dotted.split(".")
    node, path = cfg, []
    for i, name in enumerate(parts):
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{'.'.join(path)} has no sub-keys (cannot set '{dotted}')")
        names = [f.name for f in dataclasses.fields(node)]
        if name not in names:
            where = ".".join(path) or type(node).__name__
            raise ConfigError(f"unknown config key '{dotted}' in {where}{_hint(name, names)}")
        path.append(name)
        if i < len(parts) - 1:
            node = getattr(node, name)
    tp = _field_types(type(node))[parts[-1]]
    value = _parse_literal(raw) if parse and isinstance(raw, str) else raw
    if tp is str and not isinstance(value, str) and isinstance(raw, str):
        value = raw  # e.g. `name=123` for a string field keeps the text
    setattr(node, parts[-1], _coerce(value, tp, dotted))


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """Apply ``key.sub=value`` strings to `cfg` in place and validate; returns `cfg`."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        set_key(cfg, key.strip(), raw.strip())
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    """Plain JSON-able dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls: type[C], data: dict, *, prefix: str = "") -> C:
    """Build `cls` from a dict, rejecting unknown keys and wrong types.

    A config class whose stored form changed may define ``upgrade(data) -> data`` (a staticmethod): it
    turns an older stored form into today's before the keys are checked (e.g. `SamplerInfo`).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {type(data).__name__}")
    upgrade = getattr(cls, "upgrade", None)
    if callable(upgrade):
        data = upgrade(data)
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_hint(key, names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field without default was missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def save_config(cfg, directory: str | os.PathLike, filename: str = CONFIG_FILENAME) -> Path:
    """Write the resolved config as JSON next to an output (atomically)."""
    path = Path(directory) / filename
    write_json_atomic(path, {"_type": type(cfg).__name__, **to_dict(cfg)})
    return path


def load_config(cls: type[C], path: str | os.PathLike) -> C:
    """Read a config saved by `save_config` (or any JSON with the same keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a JSON object of keys, not {type(data).__name__}")
    data.pop("_type", None)
    cfg = from_dict(cls, data)
    validate(cfg)
    return cfg


def check(condition: bool, message: str) -> None:
    """Raise a `ConfigError` with `message` unless `condition` holds (for `validate()` hooks)."""
    if not condition:
        raise ConfigError(message)


__all__ = [
    "CONFIG_FILENAME",
    "SEED_MAX",
    "apply_overrides",
    "check",
    "from_dict",
    "load_config",
    "save_config",
    "set_key",
    "to_dict",
    "validate",
]
