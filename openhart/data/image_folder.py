"""An image folder as a training source: images with captions from sidecar files, a manifest or names.

N rows (samples) of a folder; S image side. Images are prepared by :mod:`openhart.data.images`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from openhart.data.images import (
    IMAGE_ERRORS,
    IMAGE_EXTENSIONS,
    Sample,
    SkipLog,
    caption_from_stem,
    check_image_size,
    load_image,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRecord:
    """One row of an image folder: where the image is, its caption and any extra metadata."""

    path: Path
    caption: str
    key: str
    extra: dict[str, Any] = field(default_factory=dict)


class ImageFolderDataset(Dataset):
    """Map-style dataset over a folder of images with captions.

    Two layouts (the Hugging Face ``imagefolder`` conventions):

    - ``metadata.jsonl`` at ``root`` with one ``{"file_name": ..., "text": ...}`` object a line
      (``file_name`` relative to ``root``; extra fields such as ``"split"`` or ``"concept"`` are kept
      in ``records[i].extra``). It wins when present.
    - otherwise every image under ``root`` (recursively) with a same-name ``.txt`` caption.

    ``split``: rows whose ``"split"`` field equals it; without such a field, the sub-folder
    ``root/split`` is used as the root. Captions are never empty: a missing or blank caption falls
    back to the file stem with ``_``/``-`` as spaces (``red_fox.png`` -> ``red fox``; counted in
    ``captions_from_stem``); a row whose stem gives no words either is skipped. Files resolve
    inside ``root``: ``..``, absolute paths and symlinks that leave it are skipped and counted.

    Validation is eager and cheap: with ``verify=True`` (default) every file is checked once with
    PIL's ``verify()`` (header and chunk checksums, no full decode) when the dataset is built, so
    ``skipped`` is exact and ``len()`` counts usable images only. A file that passes ``verify``
    but fails to decode later (rare: e.g. truncated pixel data) is counted in the process that
    meets it and replaced by the next usable index, so a batch keeps its size.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int,
        split: str | None = None,
        *,
        verify: bool = True,
    ) -> None:
        self.image_size = check_image_size(image_size)
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root: {root} is not a folder")
        self._skips = SkipLog(f"ImageFolderDataset({root})")
        self._stem_captioned: set[Path] = set()

        metadata = root / "metadata.jsonl"
        split_by_folder = split is not None and not metadata.is_file() and (root / split).is_dir()
        if split_by_folder:
            root = root / split
            metadata = root / "metadata.jsonl"
        self.root = root
        self.split = split

        if metadata.is_file():
            records = self._records_from_metadata(metadata, None if split_by_folder else split)
        else:
            if split is not None and not split_by_folder:
                raise ValueError(
                    f"split: {split!r} needs a 'split' field in metadata.jsonl or a folder {root / split}"
                )
            records = self._records_from_text_files(root)
        if verify:
            records = [record for record in records if self._verify(record)]
        self.records: list[ImageRecord] = records
        # Usable rows whose caption is the file stem (missing or blank caption).
        self.captions_from_stem = sum(record.path in self._stem_captioned for record in records)
        if self._skips.count:
            logger.warning("%s: %d item(s) skipped", self._skips.source, self._skips.count)
        logger.info("ImageFolderDataset(%s, split=%s): %d images", root, split, len(records))

    @property
    def skipped(self) -> int:
        """Rows skipped so far: unreadable images, missing files, malformed metadata lines."""
        return self._skips.count

    @property
    def skipped_items(self) -> list[tuple[str, str]]:
        """The first skipped items and why (at most ``MAX_SKIP_WARNINGS`` + 1 entries)."""
        return list(self._skips.items)

    def _caption(self, text: Any, path: Path) -> str | None:
        caption = " ".join(str(text).split()) if text is not None else ""
        if caption:
            return caption
        caption = caption_from_stem(path.name)
        if not caption:
            return None
        self._stem_captioned.add(path)
        return caption

    def _inside_root(self, path: Path) -> bool:
        """Whether ``path``, links followed, stays inside the dataset folder.

        A metadata row is data, not a path to trust: ``../../etc/passwd``, an absolute path or a
        symlink out of the folder would read files the dataset's author never shipped.
        """
        try:
            return path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # a symlink loop, an unreadable component
            return False

    def _key(self, path: Path) -> str:
        relative = path.relative_to(self.root).as_posix()
        return relative.rsplit(".", 1)[0]

    def _records_from_metadata(self, metadata: Path, split: str | None) -> list[ImageRecord]:
        rows: list[dict[str, Any]] = []
        with open(metadata, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    self._skips.skip(f"{metadata.name}:{number}", f"bad JSON: {error.msg}")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                    self._skips.skip(f"{metadata.name}:{number}", "no 'file_name' string")
                    continue
                rows.append(row)
        if split is not None:
            if rows and not any("split" in row for row in rows):
                raise ValueError(f"split: {split!r} given but {metadata} has no 'split' field")
            rows = [row for row in rows if row.get("split") == split]
        records = []
        for row in rows:
            path = metadata.parent / row["file_name"]
            if not self._inside_root(path):
                self._skips.skip(row["file_name"][:200], "outside the dataset folder")
                continue
            if not path.is_file():
                self._skips.skip(row["file_name"], "file not found")
                continue
            caption = self._caption(row.get("text"), path)
            if caption is None:
                self._skips.skip(row["file_name"], "empty caption and no words in the file name")
                continue
            extra = {k: v for k, v in row.items() if k not in ("file_name", "text")}
            records.append(ImageRecord(path=path, caption=caption, key=self._key(path), extra=extra))
        return records

    def _records_from_text_files(self, root: Path) -> list[ImageRecord]:
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        records = []
        for path in paths:
            if not self._inside_root(path):
                self._skips.skip(str(path.relative_to(root)), "a link outside the dataset folder")
                continue
            caption_file = path.with_suffix(".txt")
            text = (
                caption_file.read_text(encoding="utf-8", errors="replace") if caption_file.is_file() else None
            )
            caption = self._caption(text, path)
            if caption is None:
                self._skips.skip(str(path.relative_to(root)), "empty caption and no words in the file name")
                continue
            records.append(ImageRecord(path=path, caption=caption, key=self._key(path)))
        return records

    def _verify(self, record: ImageRecord) -> bool:
        try:
            with Image.open(record.path) as image:
                image.verify()
        except IMAGE_ERRORS as error:
            self._skips.skip(record.key, f"unreadable image: {type(error).__name__}: {error}")
            return False
        return True

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        count = len(self.records)
        if not -count <= index < count:
            raise IndexError(f"index: {index} out of range for {count} images")
        index = int(index) % count
        for offset in range(count):
            record = self.records[(index + offset) % count]
            try:
                image = load_image(record.path, self.image_size)
            except IMAGE_ERRORS as error:
                self._skips.skip(record.key, f"decode failed: {type(error).__name__}: {error}")
                continue
            return {"image": image, "caption": record.caption, "key": record.key}
        raise RuntimeError(f"{self._skips.source}: no image could be decoded")
