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
from pathlib import Path
from typing import Any, TypeVar

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
            raise ValueError(f"{cls.__name__}: unknown config field(s) {unknown}")
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


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing config file: {path}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
