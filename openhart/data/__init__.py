"""Training data: generic image–caption sources and the emoji dataset builder.

``ImageFolderDataset`` and ``WebDatasetShards`` yield ``{"image": (3, S, S) in [-1, 1],
"caption": str, "key": str}``; ``build_dataset(spec, image_size)`` builds either from a recipe's
config entry. The subpackage ``openhart.data.emoji`` builds the emoji dataset
(``build_emoji_dataset``; ``openhart data emoji``, sub-app ``openhart.data.cli.data_app``).
"""

from openhart.data.datasets import (
    ImageFolderDataset,
    ImageRecord,
    WebDatasetShards,
    assign_shards,
    build_dataset,
    caption_from_stem,
    expand_shards,
    load_image,
    prepare_image,
)

__all__ = [
    "ImageFolderDataset",
    "ImageRecord",
    "WebDatasetShards",
    "assign_shards",
    "build_dataset",
    "caption_from_stem",
    "expand_shards",
    "load_image",
    "prepare_image",
]
