"""Captions of one emoji image: every template filled from the catalogue, and the one written.

Keywords and the caption written to ``text`` are picked by stable hashes of the image key, so a
rebuild gives the same captions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from openhart.data.emoji.catalogue import EmojiInfo, dedupe_keywords
from openhart.data.emoji.sets import EmojiSet
from openhart.utils.hashing import stable_hash

# {tone} is ", light skin tone" and {with_tone} " with light skin tone" (both empty without tones).
CAPTION_TEMPLATES = (
    "{name}{tone}, {keywords} — {style}",
    "{name} emoji{tone}, {style}",
    "emoji of {name}{with_tone} in {style}",
    "{name}{tone}, {category} emoji, {style}",
    "{style} emoji: {name}{tone}",
)


def _tone_phrase(info: EmojiInfo) -> str:
    """ "light skin tone", or "light and dark skin tones" for two people; "" without tones."""
    tones = list(dict.fromkeys(info.skin_tones))
    if len(tones) <= 1:
        return "".join(tones)
    return f"{' and '.join(t.removesuffix(' skin tone') for t in tones)} skin tones"


def caption_variants(info: EmojiInfo, emoji_set: EmojiSet, key: str, max_keywords: int = 3) -> list[str]:
    """Every template's caption for one image (deduplicated, template order).

    Keywords already spelled out by the name are dropped; up to ``max_keywords`` of the rest are
    picked by a hash of ``key`` so different sets of one emoji mention different ones.
    """
    keywords = list(info.keywords)
    if emoji_set.key.startswith("openmoji"):
        keywords = list(info.openmoji_keywords) + keywords
    name_words = set(re.findall(r"[a-z0-9]+", info.name.lower()))
    keywords = [k for k in dedupe_keywords(keywords) if not set(re.findall(r"[a-z0-9]+", k)) <= name_words]
    if len(keywords) > max_keywords:
        start = stable_hash(f"keywords:{key}") % len(keywords)
        keywords = (keywords[start:] + keywords[:start])[:max_keywords]
    tone = _tone_phrase(info)
    fields = {
        "name": info.name,
        "tone": f", {tone}" if tone else "",
        "with_tone": f" with {tone}" if tone else "",
        "keywords": ", ".join(keywords),
        "category": info.category,
        "style": emoji_set.style,
    }
    captions = []
    for template in CAPTION_TEMPLATES:
        if "{keywords}" in template and not keywords:
            template = "{name}{tone} — {style}"
        if "{category}" in template and not info.category:
            template = "{name} emoji{tone}, {style}"
        caption = " ".join(template.format(**fields).split())
        if caption not in captions:
            captions.append(caption)
    return captions


def choose_caption(captions: Sequence[str], key: str) -> str:
    """The one caption written to ``text``: picked by a stable hash of the image key."""
    return captions[stable_hash(f"caption:{key}") % len(captions)]
