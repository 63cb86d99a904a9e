"""Generic image–caption sources for training, built from a recipe's config entry (``build_dataset``).

The sources live by kind: :mod:`.image_folder` (an image folder), :mod:`.webdataset` (streamed
shards), and :mod:`.images` (how both prepare an image); their names are also importable from here.

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

from typing import Any

from openhart.data.image_folder import ImageFolderDataset, ImageRecord
from openhart.data.images import (
    IMAGE_ERRORS,
    IMAGE_EXTENSIONS,
    MAX_SKIP_WARNINGS,
    Sample,
    caption_from_stem,
    composite_on_white,
    image_to_tensor,
    load_image,
    prepare_image,
)
from openhart.data.webdataset import WebDatasetShards, assign_shards, expand_braces, expand_shards

__all__ = [
    "IMAGE_ERRORS",
    "IMAGE_EXTENSIONS",
    "MAX_SKIP_WARNINGS",
    "ImageFolderDataset",
    "ImageRecord",
    "Sample",
    "WebDatasetShards",
    "assign_shards",
    "build_dataset",
    "caption_from_stem",
    "composite_on_white",
    "expand_braces",
    "expand_shards",
    "image_to_tensor",
    "load_image",
    "prepare_image",
]

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
