"""The emoji catalogue: codepoints, concepts and the held-out split; names, keywords, categories.

An image's *emoji* is its codepoint sequence (skin tones included); its *concept* is that sequence
with skin-tone modifiers removed. Names and keywords come from OpenMoji's ``openmoji.json`` (CLDR
annotations) and emoji-datasource's ``emoji.json``, looked up by codepoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openhart.data.emoji.fetch import EmojiPackage
from openhart.utils.hashing import stable_hash

SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
TONE_BY_NAME = {name: code for code, name in SKIN_TONES.items()}
OPENMOJI_GROUPS = {
    "smileys-emotion": "smileys & emotion",
    "people-body": "people & body",
    "animals-nature": "animals & nature",
    "food-drink": "food & drink",
    "travel-places": "travel & places",
    "activities": "activities",
    "objects": "objects",
    "symbols": "symbols",
    "flags": "flags",
    "component": "component",
}


def normalize_codepoints(sequence: str) -> str:
    """``1f3f3-fe0f-200d-1f308`` -> ``1F3F3-200D-1F308``: upper case, variation selector 16 dropped
    (sets disagree on where they write it; it does not change the emoji)."""
    parts = [part.upper() for part in re.split(r"[-_ ]", sequence.strip()) if part]
    return "-".join(part for part in parts if part != "FE0F")


def concept_codepoints(codepoints: str) -> str:
    """The sequence without skin-tone modifiers (a lone modifier, the tone swatch, stays itself)."""
    parts = codepoints.split("-")
    kept = [part for part in parts if part not in SKIN_TONES]
    return "-".join(kept) if kept else codepoints


def concept_split(concept_id: str, test_fraction: float = 0.05) -> str:
    """``"test"`` for about ``test_fraction`` of concepts, chosen by a stable hash, else ``"train"``."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in [0, 1), got {test_fraction!r}")
    position = stable_hash(f"openhart-emoji-split:{concept_id}") / 2.0**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


@dataclass(frozen=True)
class EmojiInfo:
    """What captions say about one emoji, independent of the set that draws it."""

    codepoints: str  # "1F44B-1F3FB"
    name: str  # "waving hand" (skin tones are in ``skin_tones``)
    skin_tones: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()  # CLDR keywords + emoji-datasource short names
    openmoji_keywords: tuple[str, ...] = ()  # OpenMoji's own tags (CC-BY-SA): OpenMoji images only
    category: str = ""

    @property
    def concept_id(self) -> str:
        return concept_codepoints(self.codepoints)


def _split_list(text: Any) -> list[str]:
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


def _parse_cldr_name(annotation: str) -> tuple[str, tuple[str, ...]]:
    """``waving hand: light skin tone`` -> ("waving hand", ("light skin tone",));
    ``flag: Germany`` -> "flag of Germany"; ``woman: red hair`` -> "woman, red hair"."""
    head, _, tail = annotation.partition(": ")
    qualifiers = _split_list(tail)
    tones = tuple(q for q in qualifiers if q in TONE_BY_NAME)
    rest = [q for q in qualifiers if q not in TONE_BY_NAME]
    if not head.strip():
        return annotation.strip(), ()
    if tones and not rest and head in TONE_BY_NAME:  # the swatch "light skin tone" names itself
        return head, ()
    if rest and head == "flag":
        return f"flag of {', '.join(rest)}", tones
    if rest and head == "keycap":
        return f"keycap {', '.join(rest)}", tones
    return ", ".join([head.strip(), *rest]), tones


def slugify(text: str) -> str:
    """``"Waving hand: light skin tone"`` -> ``"waving-hand-light-skin-tone"`` (Iconify icon names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class EmojiCatalogue:
    """Names, keywords and categories of every emoji the given packages know, by codepoints."""

    def __init__(self, packages: dict[str, EmojiPackage]) -> None:
        self.openmoji: dict[str, dict[str, Any]] = {}
        self.datasource: dict[str, dict[str, Any]] = {}  # variants point at their base entry
        self.slugs: dict[str, str] = {}  # slug of a CLDR name -> codepoints
        if "openmoji" in packages:
            for row in packages["openmoji"].read_json("data/openmoji.json"):
                codepoints = normalize_codepoints(row["hexcode"])
                self.openmoji.setdefault(codepoints, row)
                self.slugs.setdefault(slugify(row.get("annotation", "")), codepoints)
        for name in ("emoji-datasource-google", "emoji-datasource-twitter"):
            if name in packages:
                for entry in packages[name].read_json("emoji.json"):
                    self.datasource.setdefault(normalize_codepoints(entry["unified"]), entry)
                    for variant in (entry.get("skin_variations") or {}).values():
                        self.datasource.setdefault(normalize_codepoints(variant["unified"]), entry)

    def describe(self, codepoints: str, fallback_name: str = "") -> EmojiInfo:
        base = concept_codepoints(codepoints)
        tones = tuple(SKIN_TONES[p] for p in codepoints.split("-") if p in SKIN_TONES and base != codepoints)
        openmoji = self.openmoji.get(codepoints) or self.openmoji.get(base)
        datasource = self.datasource.get(codepoints) or self.datasource.get(base)
        if openmoji is not None and openmoji.get("annotation"):
            name, _ = _parse_cldr_name(openmoji["annotation"])
        elif datasource is not None and (datasource.get("name") or datasource.get("short_name")):
            name = (datasource.get("name") or datasource["short_name"].replace("_", " ")).lower()
        else:
            name = fallback_name
        keywords: list[str] = []
        if openmoji is not None:
            keywords += _split_list(openmoji.get("tags"))
        if (
            datasource is not None and datasource.get("category") != "Flags"
        ):  # flags' short names are ISO codes
            keywords += [s.replace("_", " ").replace("-", " ") for s in datasource.get("short_names") or ()]
        category = ""
        if datasource is not None and datasource.get("category"):
            category = datasource["category"].lower()
        elif openmoji is not None:
            group = openmoji.get("group", "")
            if group.startswith("extras"):
                subgroup = openmoji.get("subgroups", "")
                category = OPENMOJI_GROUPS.get(subgroup, subgroup.replace("-", " "))
            else:
                category = OPENMOJI_GROUPS.get(group, group.replace("-", " "))
        return EmojiInfo(
            codepoints=codepoints,
            name=name,
            skin_tones=tones,
            keywords=dedupe_keywords(keywords),
            openmoji_keywords=dedupe_keywords(_split_list(openmoji.get("openmoji_tags")) if openmoji else []),
            category=category,
        )


def dedupe_keywords(items: Iterable[str]) -> tuple[str, ...]:
    """Keywords lower-cased and stripped, each once in first-seen order, empty ones dropped."""
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item.lower().strip(), None)
    return tuple(k for k in seen if k)
