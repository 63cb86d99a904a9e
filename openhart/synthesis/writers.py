"""Writing a synthesized dataset safely: complete files or none, and checks that tell them apart.

Folder output: ``images/NNNNN/KEY.png`` + ``metadata.jsonl`` (the Hugging Face imagefolder layout).
WebDataset output: ``shard-NNNNNN.tar``, each sample ``KEY.png`` + ``KEY.json`` (its metadata row)
+ ``KEY.txt`` (the prompt, which the project's own shard reader takes as the caption).

Everything is written under a temporary name in the destination folder and renamed when complete
(a rename within one folder is atomic), so a killed job leaves either a finished file or a
temporary one, which the next run deletes. Tar members get fixed owners and times so that a
shard's bytes depend on its contents only.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from openhart.errors import NO_ROOM_ERRNOS, StorageError
from openhart.utils.config import atomic_write_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every complete PNG ends with this empty IEND chunk (length 0, type, CRC).
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
SHARD_MEMBER_SUFFIXES = (".png", ".json", ".txt")
NOT_WRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class OutputFolderError(StorageError):
    """The output folder cannot be written (read-only, full, not a folder); ``errno`` says why."""

    def __init__(self, errno_value: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value


def describe_write_error(path: Path, error: OSError) -> OutputFolderError:
    """A one-line error that says whether the folder is full or read-only, naming the path."""
    if error.errno in NO_ROOM_ERRNOS:
        why = "the output folder is full (no space left, quota or file-size limit)"
    elif error.errno in NOT_WRITABLE_ERRNOS:
        why = "the output folder is read-only or not writable by this user"
    else:
        why = "the output folder cannot be written"
    return OutputFolderError(error.errno, f"cannot write {path}: {why} ({error.strerror or error})")


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove that a file can be written and renamed there."""
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(errno.ENOTDIR, f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".openhart-write-test"
        atomic_write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as error:
        raise describe_write_error(folder, error) from error


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files a killed run left behind (``.NAME.*.tmp``); returns how many."""
    count = 0
    for path in folder.rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            count += 1
    return count


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_is_complete(path: Path) -> bool:
    """True when ``path`` starts like a PNG and ends with its IEND chunk (no decode needed).

    Files are only ever renamed into place once written, so this catches what the rename cannot:
    a file truncated or replaced by something else after the fact.
    """
    try:
        size = path.stat().st_size
        if size < len(PNG_SIGNATURE) + len(PNG_END):
            return False
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
            handle.seek(size - len(PNG_END))
            return head == PNG_SIGNATURE and handle.read() == PNG_END
    except OSError:
        return False


def write_png(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise describe_write_error(path, error) from error


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSON lines atomically (rank 0's merged ``metadata.jsonl``)."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise describe_write_error(path, error) from error


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}.tar"


def shard_keys(path: Path) -> set[str] | None:
    """Keys of the complete samples in a shard (png + json + txt present), None if unreadable."""
    members: dict[str, set[str]] = {}
    try:
        with tarfile.open(path, mode="r:") as archive:
            for name in archive.getnames():
                stem, dot, suffix = name.partition(".")
                members.setdefault(stem, set()).add(dot + suffix)
    except (OSError, tarfile.TarError, EOFError):
        return None
    return {key for key, suffixes in members.items() if suffixes >= set(SHARD_MEMBER_SUFFIXES)}


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0  # fixed owner and time: the shard's bytes depend only on the samples
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: Path, samples: Sequence[tuple[str, bytes, dict[str, Any]]]) -> None:
    """Write ``(key, png bytes, metadata row)`` samples as one tar, renamed into place when closed."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise describe_write_error(path, error) from error
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for key, png, row in samples:
                text = str(row["text"]).encode("utf-8")
                meta = (json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
                for suffix, data in ((".png", png), (".json", meta), (".txt", text)):
                    tar.addfile(_tar_member(key + suffix, len(data)), io.BytesIO(data))
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise describe_write_error(path, error) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
