"""The emoji sets: which npm package draws each, how captions name its style, its licence.

Also which packages are fetched by default (pinned versions) and which are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

# npm package -> pinned version fetched by default (pinned so a rebuild gives the same data).
DEFAULT_PACKAGES: dict[str, str] = {
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "openmoji": "17.0.0",
    "@iconify-json/fluent-emoji-flat": "1.2.6",
}
FORBIDDEN_PACKAGES = {
    "emoji-datasource-apple": "Apple's emoji images are not licensed for reuse",
    "emoji-datasource-facebook": "Facebook's emoji images have no clear licence",
}
# OpenMoji subgroups left out: logos of companies and products (trademarks).
EXCLUDED_OPENMOJI_SUBGROUPS = frozenset({"brand"})


@dataclass(frozen=True)
class EmojiSet:
    """One image set: where its images come from, how captions name its style, its licence."""

    key: str
    package: str
    style: str
    license: str


EMOJI_SETS: dict[str, EmojiSet] = {
    s.key: s
    for s in (
        EmojiSet("noto", "emoji-datasource-google", "noto style", "Apache-2.0"),
        EmojiSet("twemoji", "emoji-datasource-twitter", "twemoji style", "CC-BY-4.0"),
        EmojiSet("openmoji-color", "openmoji", "openmoji color outline style", "CC-BY-SA-4.0"),
        EmojiSet("openmoji-black", "openmoji", "openmoji black line art", "CC-BY-SA-4.0"),
        EmojiSet("fluent-flat", "@iconify-json/fluent-emoji-flat", "flat fluent style", "MIT"),
    )
}
