"""Prompt files for dataset synthesis: ``.txt`` (one prompt a line) or ``.jsonl`` (one object a line).

A JSONL object carries ``prompt`` (or ``text``) and optionally its own ``seed``, ``negative_prompt``,
``guidance_scale`` and ``num_images``; every other field is free metadata, copied to each image's
metadata row. A line that cannot be used (empty prompt, bad JSON, a field of the wrong type) is
reported with its 1-based line number and skipped; it never stops the job.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openhart.errors import InvalidInputError

PROMPT_SUFFIXES = (".txt", ".jsonl")
# Fields that every output metadata row sets itself: free metadata may not shadow them.
RESERVED_FIELDS = frozenset(
    {
        "file_name",
        "text",
        "seed",
        "line",
        "image_index",
        "negative_prompt",
        "guidance_scale",
        "num_inference_steps",
    }
)
# Per-line images are capped so that one typo ("num_images": 1e9) cannot swallow a job.
MAX_IMAGES_PER_LINE = 100_000
MAX_SEED = 2**63 - 1


class PromptFileError(InvalidInputError):
    """The prompts file as a whole cannot be used (missing, unreadable, unknown format)."""


@dataclass(frozen=True)
class PromptLine:
    """One usable line: the prompt, its per-line overrides (None: the job's default) and free metadata."""

    line: int  # 1-based line number in the file
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    num_images: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadLine:
    """A skipped line and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class PromptFile:
    lines: list[PromptLine]
    bad: list[BadLine]
    sha256: str  # of the file's bytes: a resumed job must read the same prompts


def _clean(text: str) -> str:
    return " ".join(text.split())


def _int_field(row: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"'{name}' must be an integer in [{low}, {high}], got {value!r}")
    return value


def _parse_json_line(number: int, text: str) -> PromptLine:
    if not text.strip():
        raise ValueError("empty line")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "prompt" in row and "text" in row:
        raise ValueError("give 'prompt' or 'text', not both")
    prompt = row.pop("prompt", row.pop("text", None))
    if not isinstance(prompt, str) or not _clean(prompt):
        raise ValueError("empty or missing 'prompt' (a non-empty string)")
    negative = row.pop("negative_prompt", None)
    if negative is not None and (not isinstance(negative, str) or not _clean(negative)):
        raise ValueError(f"'negative_prompt' must be a non-empty string or null, got {negative!r}")
    guidance = row.pop("guidance_scale", None)
    if guidance is not None and (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or not math.isfinite(guidance)
        or guidance < 0
    ):
        raise ValueError(f"'guidance_scale' must be a finite number >= 0, got {guidance!r}")
    seed = _int_field(row, "seed", 0, MAX_SEED)
    num_images = _int_field(row, "num_images", 1, MAX_IMAGES_PER_LINE)
    row.pop("seed", None)
    row.pop("num_images", None)
    shadowed = sorted(RESERVED_FIELDS & set(row))
    if shadowed:
        raise ValueError(f"field(s) {shadowed} are set by the output itself; rename them")
    return PromptLine(
        line=number,
        prompt=_clean(prompt),
        seed=seed,
        negative_prompt=_clean(negative) if negative is not None else None,
        guidance_scale=float(guidance) if guidance is not None else None,
        num_images=num_images,
        extra=row,
    )


def read_prompt_file(path: str | Path) -> PromptFile:
    """Parse ``path`` (``.txt`` or ``.jsonl``) into usable lines and reported bad ones."""
    path = Path(path)
    if path.suffix.lower() not in PROMPT_SUFFIXES:
        raise PromptFileError(
            f"{path}: prompts must be a .txt or .jsonl file, got {path.suffix or 'no suffix'!r}"
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise PromptFileError(f"{path}: no such file") from error
    except OSError as error:
        raise PromptFileError(f"{path}: cannot read it ({error.strerror})") from error
    jsonl = path.suffix.lower() == ".jsonl"
    lines: list[PromptLine] = []
    bad: list[BadLine] = []
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the file's final newline ends the last line; it does not start an empty one
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8").removesuffix("\r")
            if number == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        except UnicodeDecodeError:
            bad.append(BadLine(number, "not valid UTF-8"))
            continue
        try:
            if jsonl:
                lines.append(_parse_json_line(number, text))
            elif _clean(text):
                lines.append(PromptLine(line=number, prompt=_clean(text)))
            else:
                raise ValueError("empty prompt")
        except ValueError as error:
            bad.append(BadLine(number, str(error)))
    return PromptFile(lines=lines, bad=bad, sha256=hashlib.sha256(data).hexdigest())
