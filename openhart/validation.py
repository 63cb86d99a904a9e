"""Checks of what a caller hands in: prompts, seeds, flags, devices and output paths.

One definition each, shared by the command line, the server and the Python API, so that they
agree on what is valid. Every check raises an :class:`~openhart.errors.OpenHARTError` naming the
argument (``InvalidInputError``; a wrong type also is a ``TypeError``; a device this machine lacks
is a ``DependencyError``; an output that cannot be written is a ``StorageError``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import torch

from openhart.errors import DependencyError, InvalidInputError, StorageError

# Longest prompt in characters, the server's default ``max_prompt_chars`` too: the text encoder
# truncates to its own token budget anyway, this only bounds the work and the memory of encoding.
MAX_PROMPT_CHARS = 1000

# Seeds are int64-sized: torch.Generator.manual_seed takes up to 2**64 - 1, but a seed is also
# written to metadata and JSON and added to (image i uses seed + i), where a signed 64-bit integer
# is what other tools read back exactly. The server narrows this to 2**32 for JavaScript clients.
SEED_LIMIT = 2**63


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument of the wrong type (a ``TypeError`` too, so ``except TypeError`` still catches it)."""


def check_bool(value: object, name: str) -> bool:
    """``value`` itself when it is a bool; a string such as ``"no"`` would otherwise count as True."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_encodable(text: str, name: str) -> str:
    """``text`` when it encodes as UTF-8 (a lone surrogate from a bad decode does not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{name}: not valid Unicode text (character {error.start} is a lone surrogate "
            f"{text[error.start]!r}); decode the input as UTF-8"
        ) from error
    return text


def check_prompt(text: object, name: str = "prompt", max_chars: int = MAX_PROMPT_CHARS) -> str:
    """A prompt the CLI and the server accept: a str, UTF-8 encodable, not blank, at most ``max_chars``."""
    if not isinstance(text, str):
        raise InvalidTypeError(f"{name} must be a str, got {type(text).__name__}")
    check_encodable(text, name)
    if not text.strip():
        raise InvalidInputError(f"{name} must contain at least one non-space character")
    if len(text) > max_chars:
        raise InvalidInputError(f"{name} is {len(text)} characters long; the limit is {max_chars}")
    return text


def check_seed(seed: object, count: int = 1, name: str = "seed") -> int:
    """A seed for ``count`` images (image i uses ``seed + i``): an int with 0 <= seed + count - 1 < 2**63."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidTypeError(f"{name} must be an int, got {type(seed).__name__}")
    if seed < 0 or seed + max(count, 1) - 1 >= SEED_LIMIT:
        raise InvalidInputError(
            f"{name} must be in [0, 2**63 - {max(count, 1)}] for {count} image(s), got {seed}"
        )
    return seed


def available_devices() -> list[str]:
    """What this machine can run on, e.g. ``["cpu", "cuda:0", "cuda:1"]`` (for error messages)."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device: object, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` this machine has, checked before torch sees it.

    Without this, ``"cuda"`` on a machine without CUDA or ``"cuda:9"`` on a one-GPU machine fail
    deep inside torch with an AssertionError or an opaque runtime error.
    """
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError as error:
            raise InvalidInputError(
                f"{name}: {device!r} is not a device name; available here: {', '.join(available_devices())}"
            ) from error
    elif isinstance(device, int) and not isinstance(device, bool):
        parsed = torch.device("cuda", device)  # torch's own meaning of an int device
    else:
        raise InvalidTypeError(f"{name} must be a str or torch.device, got {type(device).__name__}")
    kind = parsed.type
    if kind in ("cpu", "meta"):
        return parsed
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise DependencyError(
                f"{name}: {str(parsed)!r} is not on this machine; available here: "
                f"{', '.join(available_devices())}"
            )
        return parsed
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise DependencyError(
                f"{name}: Apple MPS is not available on this machine; available here: "
                f"{', '.join(available_devices())}"
            )
        return parsed
    backend = getattr(torch, kind, None)  # xpu, hpu, ...: trust their own availability probe
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise DependencyError(
            f"{name}: {str(parsed)!r} is not available on this machine; available here: "
            f"{', '.join(available_devices())}"
        )
    return parsed


def check_output_folder(folder: Path, option: str) -> None:
    """Raise :class:`StorageError` unless files can be created in ``folder`` (created later if absent).

    Checked before a model loads, so a typo in ``-o`` costs nothing. The nearest existing folder
    is probed with a real temporary file: permission bits say nothing for root, and a read-only
    mount or an immutable folder only shows on an actual write.
    """
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            raise StorageError(f"{option}: {existing} is a dangling symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{option}: cannot create {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".openhart-write-check-"):
            pass
    except OSError as error:
        raise StorageError(
            f"{option}: cannot write in {existing} ({error.strerror or error}); pick a writable folder"
        ) from error


def check_output_file(path: Path, option: str) -> None:
    """Raise :class:`StorageError` unless ``path`` can be (re)written as a regular file."""
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise StorageError(f"{option}: {path} exists and is {what}; give a new .png file path")
    check_output_folder(path.parent, option)


def png_output_paths(output: str, count: int, option: str, allow_folder: bool = True) -> list[Path]:
    """The PNG files ``output`` names for ``count`` images, each checked writable before any work.

    ``NAME.png`` for one image, ``NAME-000.png``, ``NAME-001.png`` ... for several; with
    ``allow_folder`` a folder (an existing one, or a path without suffix) gets ``image-000.png`` ...
    """
    if not output.strip():  # Path("") is ".", which would silently write into the working folder
        raise InvalidInputError(
            f"{option} is empty: give a .png file path" + (" or a folder" if allow_folder else "")
        )
    path = Path(output)
    if allow_folder and (path.is_dir() or path.suffix == ""):
        check_output_folder(path, option)
        return [path / f"image-{i:03d}.png" for i in range(count)]
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"{option}: only .png output is supported, got {output!r}")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i:03d}.png") for i in range(count)]
    for target in paths:
        check_output_file(target, option)
    return paths
