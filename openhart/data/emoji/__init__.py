"""The emoji dataset builder (``openhart data emoji``)."""

from openhart.data.emoji.build import (
    DEFAULT_PACKAGES,
    EMOJI_SETS,
    build_emoji_dataset,
    concept_split,
    fetch_packages,
    heldout_prompts,
    normalize_codepoints,
    open_packages,
)

__all__ = [
    "DEFAULT_PACKAGES",
    "EMOJI_SETS",
    "build_emoji_dataset",
    "concept_split",
    "fetch_packages",
    "heldout_prompts",
    "normalize_codepoints",
    "open_packages",
]
