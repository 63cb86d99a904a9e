"""Typed component configs that round-trip through ``config.json``.

Every component (tokenizer, transformer, diffusion head, text encoder) is built from one frozen
dataclass. The dataclass is the single source of truth: ``save_pretrained`` writes it beside the
weights and ``from_pretrained`` rebuilds the module from it alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from openhart.errors import ConfigError

T = TypeVar("T", bound="Config")


class Config:
    """Mixin for frozen dataclass configs: JSON (de)serialisation with unknown-field checks."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown config field(s) {unknown}")
        kwargs = {}
        for key, value in data.items():
            # JSON has no tuples; configs keep sequences as tuples so they stay hashable/frozen.
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file that should be there is not (names the path)."""


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`ConfigError` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileNotFoundError(f"missing config file: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); restore or rewrite this file") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason}); restore this file") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(config_cls: type[T], path: str | os.PathLike[str]) -> T:
    """Rebuild a component config from ``path``, checking every field: present, known, typed.

    A model folder's ``config.json`` may come from anywhere; a wrong type would otherwise surface
    much later as an obscure error inside a layer's constructor. Raises :class:`ConfigError`
    naming the file and the field.
    """
    data = read_json(path)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(config_cls)
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ConfigError(f"{path}: missing config field(s) {missing} of {config_cls.__name__}")
    for name, value in data.items():
        if name in hints and not _matches(value, hints[name]):
            raise ConfigError(
                f"{path}: field {name!r} must be {_describe(hints[name])}, got {value!r} "
                f"({type(value).__name__})"
            )
    try:
        return config_cls.from_dict(data)  # type: ignore[attr-defined]
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    except (TypeError, ValueError) as error:  # a config's own __post_init__ checks
        raise ConfigError(f"{path}: {error}") from error


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (types JSON can carry only)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1 in some tools
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # an annotation JSON cannot express: left to the config's own checks


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
