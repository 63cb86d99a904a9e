"""The work plan of a synthesis job: every image, its name and seed, its batch and its shard.

The plan depends only on the prompts and the job's settings, never on the number of processes:

- item ``g`` (global index, line-major) is image ``j`` of prompt line ``L``; its key is
  ``LLLLLLLL-JJJJ`` and its seed is ``seed(L) + j`` when the line carries a ``seed``, otherwise a
  hash of (``--seed``, L, j). A file or shard sample is named from the key alone.
- units are runs of ``shard_size`` consecutive items (a WebDataset shard each).
- within a unit, items with the same sampling parameters (negative prompt, guidance) form batches
  of at most ``batch_size``, in order.

Ranks then take whole batches (folder output) or whole units (WebDataset output) round-robin.
Because every batch holds the same images whatever the world size, the pixels are byte-identical
for 1 or N processes: batched float kernels can round differently for different batch contents,
so a fixed batch composition is what makes the bytes reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openhart.synthesis.prompts import PromptLine
from openhart.utils.hashing import derive_seed

FORMATS = ("folder", "webdataset")
# Lines per image sub-folder: keeps folders small when a job writes millions of images.
LINES_PER_FOLDER = 1000


@dataclass(frozen=True)
class WorkItem:
    """One image to make."""

    index: int  # global position in the plan (line-major, then image index)
    line: int
    image_index: int
    prompt: str
    negative_prompt: str | None
    guidance_scale: float | None
    seed: int
    extra: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.line:08d}-{self.image_index:04d}"

    @property
    def file_name(self) -> str:
        """Path of the image in folder output, relative to the output folder."""
        return f"images/{self.line // LINES_PER_FOLDER:05d}/{self.key}.png"

    def metadata(self, num_inference_steps: int | None) -> dict[str, Any]:
        """The image's row in the output: Hugging Face imagefolder columns first, then free fields."""
        return {
            "file_name": self.file_name,
            "text": self.prompt,
            "seed": self.seed,
            "line": self.line,
            "image_index": self.image_index,
            "negative_prompt": self.negative_prompt,
            "guidance_scale": self.guidance_scale,
            "num_inference_steps": num_inference_steps,
            **self.extra,
        }


@dataclass(frozen=True)
class Batch:
    """Items generated together in one pipeline call (same negative prompt and guidance)."""

    index: int  # global batch number
    unit: int
    items: tuple[WorkItem, ...]


@dataclass(frozen=True)
class Plan:
    items: list[WorkItem]
    batches: list[Batch]
    shard_size: int

    @property
    def num_units(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def unit_items(self, unit: int) -> list[WorkItem]:
        return self.items[unit * self.shard_size : (unit + 1) * self.shard_size]

    def batches_for_rank(self, rank: int, world_size: int, output_format: str) -> list[Batch]:
        """The batches one rank runs: every ``world_size``-th batch (folder) or unit (WebDataset)."""
        if output_format == "folder":
            return [b for b in self.batches if b.index % world_size == rank]
        return [b for b in self.batches if b.unit % world_size == rank]


def item_seed(job_seed: int, line: PromptLine, image_index: int) -> int:
    """The seed of image ``image_index`` of ``line``: the line's own seed + index, or a hash."""
    if line.seed is not None:
        return line.seed + image_index
    return derive_seed("synthesize", job_seed, line.line, image_index)


def build_plan(
    lines: Sequence[PromptLine],
    *,
    images_per_prompt: int,
    seed: int,
    guidance_scale: float | None,
    batch_size: int,
    shard_size: int,
) -> Plan:
    """Every image of the job, grouped into batches within shards (see the module docstring)."""
    for name, value in (
        ("images_per_prompt", images_per_prompt),
        ("batch_size", batch_size),
        ("shard_size", shard_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    items: list[WorkItem] = []
    for line in lines:
        for j in range(line.num_images if line.num_images is not None else images_per_prompt):
            items.append(
                WorkItem(
                    index=len(items),
                    line=line.line,
                    image_index=j,
                    prompt=line.prompt,
                    negative_prompt=line.negative_prompt,
                    guidance_scale=line.guidance_scale if line.guidance_scale is not None else guidance_scale,
                    seed=item_seed(seed, line, j),
                    extra=line.extra,
                )
            )
    batches: list[Batch] = []
    for unit_start in range(0, len(items), shard_size):
        unit = unit_start // shard_size
        groups: dict[tuple[str | None, float], list[WorkItem]] = {}
        for item in items[unit_start : unit_start + shard_size]:
            groups.setdefault((item.negative_prompt, item.guidance_scale), []).append(item)
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                batches.append(Batch(len(batches), unit, tuple(group[start : start + batch_size])))
    return Plan(items=items, batches=batches, shard_size=shard_size)
