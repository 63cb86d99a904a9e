"""Typed configs that round-trip through ``config.json`` and check their own fields.

Every component (tokenizer, transformer, diffusion head, text encoder) is built from one frozen
dataclass. The dataclass is the single source of truth: ``save_pretrained`` writes it beside the
weights and ``from_pretrained`` rebuilds the module from it alone.

Fields declare what they accept with :func:`checked` (type, bounds, choices); :class:`Config`
checks them all when an instance is made and raises the class's error naming the field::

    width: int = checked(1024, kind="int", ge=1)
    loss: str = checked("hinge", kind="choice", choices=("hinge", "non-saturating"))

Checks that relate two fields go in the class's :meth:`Config.validate`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from openhart.errors import ConfigError

T = TypeVar("T", bound="Config")

KINDS = ("int", "number", "bool", "str", "choice", "mapping", "ints", "numbers", "strings")
_SEQUENCE_KINDS = ("ints", "numbers", "strings")


@dataclasses.dataclass(frozen=True)
class FieldCheck:
    """What one config field accepts; ``describe()`` is the "expected ..." part of the error."""

    kind: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    multiple_of: int | None = None
    length: int | None = None  # sequences: exactly this many items
    optional: bool = False  # None is accepted too
    expect: str | None = None  # a description replacing the generated one

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind in _SEQUENCE_KINDS:
            if not isinstance(value, tuple) or (self.length is not None and len(value) != self.length):
                return False
            item_kind = {"ints": "int", "numbers": "number", "strings": "str"}[self.kind]
            return all(self._scalar_ok(item_kind, item) for item in value)
        return self._scalar_ok(self.kind, value)

    def _scalar_ok(self, kind: str, value: Any) -> bool:
        if kind == "bool":
            return isinstance(value, bool)
        if kind == "str":
            return isinstance(value, str) and (self.kind == "strings" or bool(value))
        if kind == "choice":
            return any(value == choice and type(value) is type(choice) for choice in self.choices or ())
        if kind == "mapping":
            return isinstance(value, dict)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False  # True is an int to Python, never to a config
        if kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        bounds = (
            (self.ge, lambda v, b: v >= b),
            (self.gt, lambda v, b: v > b),
            (self.le, lambda v, b: v <= b),
            (self.lt, lambda v, b: v < b),
        )
        if any(bound is not None and not holds(value, bound) for bound, holds in bounds):
            return False
        return self.multiple_of is None or value % self.multiple_of == 0

    def describe(self) -> str:
        if self.expect is not None:
            text = self.expect
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = f"one of {self.choices}"
        elif self.kind == "mapping":
            text = "a mapping"
        elif self.kind == "str":
            text = "a non-empty string"
        elif self.kind == "strings":
            text = "a list of strings"
        else:
            noun = {"int": "an int", "number": "a number", "ints": "ints", "numbers": "numbers"}[self.kind]
            if self.length is not None:
                noun = f"{self.length} {noun}"
            text = noun + self._describe_bounds()
            if self.multiple_of is not None:
                text += f", a multiple of {self.multiple_of}"
        return text + (" or null" if self.optional else "")

    def _describe_bounds(self) -> str:
        low = (
            f"[{_fmt(self.ge)}"
            if self.ge is not None
            else f"({_fmt(self.gt)}"
            if self.gt is not None
            else None
        )
        high = (
            f"{_fmt(self.le)}]"
            if self.le is not None
            else f"{_fmt(self.lt)})"
            if self.lt is not None
            else None
        )
        if low is not None and high is not None:
            return f" in {low}, {high}"
        if low is not None:
            return f" >= {_fmt(self.ge)}" if self.ge is not None else f" > {_fmt(self.gt)}"
        if high is not None:
            return f" <= {_fmt(self.le)}" if self.le is not None else f" < {_fmt(self.lt)}"
        return ""


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def checked(
    default: Any = dataclasses.MISSING,
    *,
    kind: str,
    default_factory: Any = dataclasses.MISSING,
    **rules: Any,
) -> Any:
    """A dataclass field whose value :class:`Config` checks (rules: :class:`FieldCheck`'s fields)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check = FieldCheck(kind=kind, **rules)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"check": check})


class Config:
    """Mixin for frozen dataclass configs: field checks, JSON (de)serialisation with unknown-field checks.

    ``field_prefix`` names the fields in errors (a recipe section's ``"optim."``, a component's
    ``"HartTransformerConfig."``); ``error_type`` is what a bad field raises (a ValueError).
    """

    field_prefix: ClassVar[str] = ""
    error_type: ClassVar[type[Exception]] = ConfigError

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            check = field.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, field.name)
            if check.kind in _SEQUENCE_KINDS and isinstance(value, list):
                value = tuple(value)  # YAML and JSON have lists; configs stay hashable
                object.__setattr__(self, field.name, value)
            if not check.accepts(value):
                self.fail(field.name, check.describe(), value)
        self.validate()

    def validate(self) -> None:
        """Checks that relate several fields (each field's own rules are checked before this)."""

    def fail(self, name: str, expected: str, value: Any) -> None:
        """Raise ``error_type`` for field ``name``: what was expected, what was given."""
        shown = repr(value)
        if len(shown) > 200:  # a config may hold a long string; the error stays one readable line
            shown = shown[:200] + "..."
        raise self.error_type(f"{self.field_prefix}{name}: expected {expected}, got {shown}")

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
