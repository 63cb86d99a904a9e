"""Streamed WebDataset shards as a training source: shard lists, their split over workers, a shuffle buffer.

K shards, W workers (DDP ranks × DataLoader workers per rank), S image side. The only random
draws (shard order, shuffle buffer) come from ``torch.Generator``s seeded from the caller's
``seed`` and the epoch, drawn through ``openhart.utils.random``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from glob import glob
from pathlib import Path
from typing import BinaryIO

import torch
from torch.utils.data import IterableDataset, get_worker_info

from openhart.data.images import (
    IMAGE_ERRORS,
    Sample,
    SkipLog,
    check_image_size,
    load_image,
)
from openhart.utils.hashing import mix_seed
from openhart.utils.random import rand_tensor

logger = logging.getLogger(__name__)


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
        self.image_size = check_image_size(image_size)
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
        self._skips = SkipLog("WebDatasetShards")

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
