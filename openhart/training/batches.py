"""Batches for training: collating dataset samples and each process's resumable share per epoch.

A map-style dataset is read in a per-epoch ``DistributedSampler`` order (every rank a disjoint
share, ``drop_last`` so all ranks take the same number of steps) and a resumed run skips the
batches of the epoch it already consumed without loading them; an iterable dataset (WebDataset
shards, sharded by rank and worker itself) is re-iterated each epoch (``set_epoch`` when it has
one) and the consumed batches are read and skipped.

Dimension legend: B images per process, S image side.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from openhart.utils.distributed import DistributedContext
from openhart.utils.hashing import derive_seed


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    captions: list[str]
    keys: list[str]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) on CUDA runs
        return Batch(self.images.pin_memory(), self.captions, self.keys)


def collate_samples(samples: list[dict[str, Any]]) -> Batch:
    """Stack dataset samples ``dict(image=(3, S, S) float in [-1, 1], caption=str, key=str)``."""
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict) or not {"image", "caption", "key"} <= set(sample):
            found = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise ValueError(
                f"dataset sample {index}: expected a dict with 'image', 'caption' and 'key', got {found}"
            )
        image = sample["image"]
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"dataset sample {index}: 'image' must be a float tensor (3, S, S), got {shape}")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"dataset samples in one batch have different image shapes: {sorted(shapes)}")
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        captions=[str(s["caption"]) for s in samples],
        keys=[str(s["key"]) for s in samples],
    )


class BatchStream:
    """Per-epoch batches of this process's share of the data, resumable at a batch index."""

    def __init__(
        self, dataset: Dataset, batch_size: int, ctx: DistributedContext, seed: int, num_workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.ctx = ctx
        self.seed = seed
        self.num_workers = num_workers
        self.iterable = isinstance(dataset, IterableDataset)
        if not self.iterable:
            if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
                raise TypeError(
                    f"dataset: expected a torch Dataset or IterableDataset, got {type(dataset).__name__}"
                )
            per_rank = len(dataset) // ctx.world_size
            if per_rank < batch_size:
                raise ValueError(
                    f"data.batch_size: the dataset has {len(dataset)} samples, fewer than "
                    f"batch_size {batch_size} × world size {ctx.world_size}"
                )

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch ``skip`` on (the first ``skip`` were consumed before)."""
        # Worker seeds (for datasets that draw random numbers) depend only on (seed, epoch, rank).
        loader_generator = torch.Generator().manual_seed(
            derive_seed(self.seed, epoch, self.ctx.rank, "loader")
        )
        common = {
            "num_workers": self.num_workers,
            "collate_fn": collate_samples,
            "generator": loader_generator,
            "pin_memory": self.ctx.device.type == "cuda",
        }
        if self.iterable:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True, **common)
            for index, batch in enumerate(loader):
                if index >= skip:
                    yield batch
            return
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        order = list(sampler)
        count = len(order) // self.batch_size
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(skip, count)]
        if batches:
            yield from DataLoader(self.dataset, batch_sampler=batches, **common)


def load_dataset(spec: dict[str, Any], image_size: int) -> Dataset:
    """``openhart.data.build_dataset(spec, image_size)``, with a clear error when data is not set up."""
    if not spec:
        raise ValueError("data.train: the recipe names no dataset (e.g. {kind: imagefolder, path: DIR})")
    try:
        from openhart.data import build_dataset
    except ImportError as error:
        raise ImportError(
            "openhart.data.build_dataset is not available in this installation; pass a dataset to the "
            f"trainer directly ({error})"
        ) from error
    return build_dataset(spec, image_size)
