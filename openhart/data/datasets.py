"""Generic image–caption sources for training: an image folder and streamed WebDataset shards.

Every source yields the same sample: ``{"image": (3, S, S) float32 in [-1, 1], "caption": str,
"key": str}``, so recipes switch sources by changing one config entry (``build_dataset``).

Dimensions: S image side (``image_size``), N rows (samples) of a folder, K shards, W workers
(DDP ranks × DataLoader workers per rank).

Images are prepared the same way everywhere (``prepare_image``): transparency composited on
white, the shorter side resized to S (LANCZOS when shrinking, BICUBIC when enlarging), then a
center crop. Corrupt or unreadable images never stop a run: they are skipped, counted in
``skipped`` and logged.

Randomness: the only random draws (shard order, shuffle buffer) come from ``torch.Generator``s
seeded from the caller's ``seed`` and the epoch, drawn through ``openhart.utils.random``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from openhart.utils.hashing import mix_seed
from openhart.utils.random import rand_tensor

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# Individual skip warnings stop after this many per source; a count keeps going in ``skipped``.
MAX_SKIP_WARNINGS = 20
# Errors that mean "this image is broken", as opposed to bugs in our code.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)

Sample = dict[str, Any]  # {"image": (3, S, S) tensor, "caption": str, "key": str}


# --------------------------------------------------------------------------------------------
# Image preparation (shared by every source)
# --------------------------------------------------------------------------------------------


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    return image_size


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB image with any transparency (RGBA, LA, palette with a transparent index) laid on white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def prepare_image(image: Image.Image, image_size: int) -> Image.Image:
    """Square RGB ``image_size`` image: composite on white, shorter side to S, center crop."""
    _check_image_size(image_size)
    image = composite_on_white(image)
    width, height = image.size
    scale = image_size / min(width, height)
    if scale != 1.0:
        new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        # LANCZOS anti-aliases when shrinking; it rings when enlarging, where BICUBIC is the usual choice.
        resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
        image = image.resize(new_size, resample=resample)
        width, height = image.size
    left = (width - image_size) // 2
    top = (height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] from an RGB PIL image."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
    return tensor.float().div_(127.5).sub_(1.0)


def load_image(source: str | os.PathLike[str] | bytes, image_size: int) -> torch.Tensor:
    """Decode a file path or encoded bytes into a prepared (3, S, S) tensor in [-1, 1].

    Raises one of ``IMAGE_ERRORS`` for a corrupt or unreadable image.
    """
    _check_image_size(image_size)
    handle: BinaryIO | str | os.PathLike[str] = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        # JPEG decoders can skip detail below the target size: a large speed-up on big photos.
        image.draft("RGB", (image_size, image_size))
        image.load()
        return image_to_tensor(prepare_image(image, image_size))


def caption_from_stem(name: str) -> str:
    """Fallback caption from a file name: ``red_fox-01.png`` -> ``red fox 01``."""
    stem = Path(name).name.split(".")[0]
    return " ".join(re.sub(r"[_\-]+", " ", stem).split())


class _SkipLog:
    """Counts skipped items and warns about the first few (one list per source object)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.items: list[tuple[str, str]] = []

    def skip(self, item: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_SKIP_WARNINGS:
            self.items.append((item, reason))
            logger.warning("%s: skipping %s (%s)", self.source, item, reason)
        elif len(self.items) == MAX_SKIP_WARNINGS:
            self.items.append(("...", "further skips are counted, not logged"))
            logger.warning("%s: more skipped items; only counting from now on", self.source)


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------


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
        self.image_size = _check_image_size(image_size)
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root: {root} is not a folder")
        self._skips = _SkipLog(f"ImageFolderDataset({root})")
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


# --------------------------------------------------------------------------------------------
# WebDataset shards
# --------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard notation: ``shard-{000..002}.tar`` -> three names (zero padding kept);
    ``{a,b}`` lists alternatives. Several groups expand as a product, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.group(1), numeric.group(2)
        width = len(first) if first.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "pipe:"))


def expand_shards(urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shard list of ``urls``: brace patterns, local globs, plain paths or URLs, in order given
    (each glob sorted). A local path that matches nothing is an error."""
    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    if not items:
        raise ValueError("urls: no shards given")
    shards: list[str] = []
    for item in items:
        for pattern in expand_braces(os.fspath(item)):
            if _is_remote(pattern):
                shards.append(pattern)
            elif any(char in pattern for char in "*?["):
                matches = sorted(glob(pattern))
                if not matches:
                    raise ValueError(f"urls: {pattern!r} matches no file")
                shards.extend(matches)
            elif Path(pattern).is_file():
                shards.append(pattern)
            else:
                raise ValueError(f"urls: shard {pattern!r} does not exist")
    return shards


def assign_shards(
    shards: Sequence[str], rank: int, world_size: int, worker_id: int, num_workers: int
) -> list[str]:
    """The shards read by one (rank, worker): every ``world_size``-th shard from ``rank``, then every
    ``num_workers``-th of those from ``worker_id``. Over all ranks and workers the subsets are
    disjoint and cover ``shards`` exactly once, and a rank's shards do not depend on how many
    DataLoader workers it runs. With fewer shards than readers some readers get none."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: {rank} not in [0, {world_size})")
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id: {worker_id} not in [0, {num_workers})")
    return list(shards[rank::world_size][worker_id::num_workers])


class _UniformStream:
    """Uniform [0, 1) numbers from one seeded generator, drawn in blocks (one call per 1024)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.block: list[float] = []

    def index(self, upper: int) -> int:
        if not self.block:
            self.block = rand_tensor((1024,), self.generator).tolist()[::-1]
        return min(int(self.block.pop() * upper), upper - 1)


def _distributed_rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    # torchrun sets these before the process group exists (e.g. a dataset built before init).
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def _open_stream(url: str) -> Iterator[BinaryIO]:
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url) as response:  # the user's own shard URLs
            yield response
    elif url.startswith("pipe:"):
        # WebDataset's convention, e.g. "pipe:aws s3 cp s3://bucket/shard-000.tar -".
        with subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            yield process.stdout
            process.stdout.close()  # a reader that stops early must not leave the command blocked
        if process.returncode not in (0, -13):  # -13: SIGPIPE after an early stop
            raise OSError(f"{url!r} exited with status {process.returncode}")
    else:
        with open(url, "rb") as handle:
            yield handle


class WebDatasetShards(IterableDataset):
    """Streamed samples from WebDataset tar shards: ``KEY.jpg|jpeg|png|webp`` + ``KEY.txt``.

    Plain ``tarfile`` streaming rather than the ``webdataset`` package: what this needs is small
    (group a tar's consecutive members by key, decode, shuffle) and doing it here keeps three
    things exact that the package leaves to version-dependent hooks: the (rank, worker) shard
    split (``assign_shards``), the skip counter, and seeded shuffles with no global RNG. Shards
    written by ``webdataset``'s ``TarWriter`` (or plain ``tar``) read unchanged.

    ``urls``: paths, globs, brace patterns (``shards/train-{000000..000127}.tar``), http(s) URLs or
    ``pipe:COMMAND`` streams. Each (rank, worker) reads a disjoint subset of shards; ``rank`` and
    ``world_size`` default to the initialised process group (or torchrun's ``RANK`` /
    ``WORLD_SIZE``). The shard order is shuffled with ``seed + epoch`` (the same on every rank,
    so the split stays disjoint); samples pass through a ``shuffle_buffer``-sized buffer seeded
    by (seed, epoch, rank, worker). Call ``set_epoch`` each epoch, or pass ``repeat=True`` to
    cycle epochs forever (DDP ranks may hold different numbers of samples, so step-counted loops
    with ``repeat`` keep ranks in lockstep).

    Samples whose image does not decode or that have no image or an empty caption are skipped
    and counted in ``skipped`` (per process: DataLoader workers count their own and log the
    first few); a shard that cannot be opened or is truncated is logged and the rest of it is
    skipped. The buffer holds encoded bytes, so memory does not grow with ``image_size``.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        image_size: int,
        *,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        shuffle_shards: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        repeat: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = _check_image_size(image_size)
        if isinstance(shuffle_buffer, bool) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer: expected an int >= 0, got {shuffle_buffer!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("rank, world_size: give both or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ValueError(f"rank: {rank} not in [0, world_size={world_size})")
        self.shards = expand_shards(urls)
        self.shuffle_buffer = shuffle_buffer
        self.seed = int(seed)
        self.shuffle_shards = shuffle_shards
        self.rank = rank
        self.world_size = world_size
        self.repeat = repeat
        self.epoch = 0
        self._skips = _SkipLog("WebDatasetShards")

    @property
    def skipped(self) -> int:
        """Samples skipped by this process so far (corrupt image, no image, empty caption)."""
        return self._skips.count

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shards and samples for a new epoch (DataLoader workers pick it up on restart)."""
        self.epoch = int(epoch)

    def shard_order(self, epoch: int) -> list[str]:
        if not self.shuffle_shards:
            return list(self.shards)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.argsort(rand_tensor((len(self.shards),), generator), stable=True)
        return [self.shards[i] for i in order.tolist()]

    def shards_for(
        self, epoch: int, rank: int, world_size: int, worker_id: int, num_workers: int
    ) -> list[str]:
        """The shards that (rank, worker) reads in ``epoch``."""
        return assign_shards(self.shard_order(epoch), rank, world_size, worker_id, num_workers)

    def _position(self) -> tuple[int, int, int, int]:
        rank, world_size = (
            (self.rank, self.world_size) if self.rank is not None else _distributed_rank_and_world()
        )
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return rank, world_size, worker_id, num_workers  # type: ignore[return-value]

    def _raw_samples(self, shards: list[str]) -> Iterator[dict[str, bytes]]:
        """Consecutive tar members grouped by key (the file name up to its first dot)."""
        for shard in shards:
            group: dict[str, bytes] = {}
            current: str | None = None
            try:
                with _open_stream(shard) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
                    for member in archive:
                        if not member.isfile():
                            continue
                        directory, _, base = member.name.rpartition("/")
                        stem, dot, extension = base.partition(".")
                        if not dot or base.startswith("."):
                            continue  # no extension: not part of a sample (e.g. ._ metadata)
                        key = f"{directory}/{stem}" if directory else stem
                        if key != current and group:
                            yield group
                            group = {}
                        current = key
                        handle = archive.extractfile(member)
                        group["__key__"] = key.encode()
                        group[extension.lower()] = handle.read() if handle is not None else b""
            except (OSError, tarfile.TarError, EOFError) as error:
                self._skips.skip(shard, f"shard unreadable from here on: {type(error).__name__}: {error}")
            if group:
                yield group

    def _decode(self, raw: dict[str, bytes]) -> Sample | None:
        key = raw["__key__"].decode(errors="replace")
        image_bytes = next((raw[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in raw), None)
        if image_bytes is None:
            self._skips.skip(key, "no jpg/png/webp member")
            return None
        caption = " ".join(raw.get("txt", b"").decode("utf-8", errors="replace").split())
        if not caption:
            # Shard keys are usually opaque ids, so unlike a folder there is no file name to fall back on.
            self._skips.skip(key, "empty or missing .txt caption")
            return None
        try:
            image = load_image(image_bytes, self.image_size)
        except IMAGE_ERRORS as error:
            self._skips.skip(key, f"decode failed: {type(error).__name__}: {error}")
            return None
        return {"image": image, "caption": caption, "key": key}

    def _one_epoch(self, epoch: int) -> Iterator[Sample]:
        rank, world_size, worker_id, num_workers = self._position()
        shards = self.shards_for(epoch, rank, world_size, worker_id, num_workers)
        if not shards:
            logger.warning(
                "WebDatasetShards: rank %d worker %d has no shard (%d shards for %d readers)",
                rank, worker_id, len(self.shards), world_size * num_workers,
            )  # fmt: skip
            return
        uniforms = _UniformStream(mix_seed(self.seed, epoch, rank, worker_id))
        buffer: list[dict[str, bytes]] = []
        for raw in self._raw_samples(shards):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(raw)
                continue
            if self.shuffle_buffer == 0:
                chosen = raw
            else:
                # Emit a random buffered sample and keep the new one in its place.
                slot = uniforms.index(len(buffer))
                chosen, buffer[slot] = buffer[slot], raw
            sample = self._decode(chosen)
            if sample is not None:
                yield sample
        while buffer:
            slot = uniforms.index(len(buffer))
            buffer[slot], buffer[-1] = buffer[-1], buffer[slot]
            sample = self._decode(buffer.pop())
            if sample is not None:
                yield sample

    def __iter__(self) -> Iterator[Sample]:
        epoch = self.epoch
        while True:
            yield from self._one_epoch(epoch)
            if not self.repeat:
                return
            epoch += 1


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

_SPEC_KEYS = {
    "imagefolder": {"root", "split", "verify"},
    "webdataset": {"urls", "shuffle_buffer", "seed", "shuffle_shards", "rank", "world_size", "repeat"},
}


def build_dataset(spec: dict[str, Any], image_size: int) -> ImageFolderDataset | WebDatasetShards:
    """A dataset from a recipe's config entry.

    ``{"type": "imagefolder", "root": "data/emoji-64", "split": "train"}`` or
    ``{"type": "webdataset", "urls": "shards/{000..127}.tar", "shuffle_buffer": 2000, "seed": 0}``;
    the other keys are the constructor's keyword arguments. Unknown types or keys are errors.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"spec: expected a dict, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise ValueError(f"spec: 'type' must be one of {sorted(_SPEC_KEYS)}, got {kind!r}")
    options = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(options) - _SPEC_KEYS[kind])
    if unknown:
        raise ValueError(
            f"spec: unknown key(s) {unknown} for type {kind!r}; allowed: {sorted(_SPEC_KEYS[kind])}"
        )
    if kind == "imagefolder":
        if "root" not in options:
            raise ValueError("spec: 'root' is required for type 'imagefolder'")
        root = options.pop("root")
        split = options.pop("split", None)
        return ImageFolderDataset(root, image_size, split, **options)
    if "urls" not in options:
        raise ValueError("spec: 'urls' is required for type 'webdataset'")
    return WebDatasetShards(options.pop("urls"), image_size, **options)
