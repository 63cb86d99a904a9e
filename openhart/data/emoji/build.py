"""The emoji dataset build: every image of the chosen sets written once, captioned and split.

Writes ``images/<set>/<codepoints>.png``, ``metadata.jsonl`` (one row per image, sorted by key),
the licences and ``build.json`` (the ``EmojiBuildReport``). Drawings whose captions cannot be true
are left out (``ambiguous_drawings``). ``heldout_prompts`` reads the held-out concepts back.

Dimensions: S image side (``image_size``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from openhart.data.emoji.captions import caption_variants, choose_caption
from openhart.data.emoji.catalogue import EmojiCatalogue, EmojiInfo, concept_split
from openhart.data.emoji.fetch import open_packages
from openhart.data.emoji.images import enumerate_images
from openhart.data.emoji.licences import write_licenses
from openhart.data.emoji.sets import DEFAULT_PACKAGES, EMOJI_SETS
from openhart.utils.config import atomic_write_bytes
from openhart.utils.images import save_png

logger = logging.getLogger(__name__)

# A drawing shared by more concepts than this (in one set) says nothing about any of them.
MAX_CONCEPTS_PER_DRAWING = 3


@dataclass
class EmojiBuildReport:
    """Counts of one build (also written to ``build.json``)."""

    images: int = 0
    rendered: int = 0
    reused: int = 0  # already on disk from an earlier (interrupted) run
    failed: int = 0
    duplicates: int = 0
    dropped_ambiguous: int = 0  # see ``ambiguous_drawings``
    per_set: dict[str, int] = field(default_factory=dict)
    emoji: int = 0  # distinct codepoint sequences (skin tones count separately)
    concepts: int = 0  # distinct concepts (skin tones merged): the unit of the split
    test_images: int = 0
    test_concepts: int = 0
    seconds: float = 0.0
    packages: dict[str, str] = field(default_factory=dict)
    image_size: int = 64
    test_fraction: float = 0.05
    drop_ambiguous: bool = True


def ambiguous_drawings(rows: dict[str, dict[str, Any]], drawings: dict[str, bytes]) -> set[str]:
    """Keys of images whose captions would claim what the drawing cannot show.

    Images of one set are grouped by identical pixels. (1) A drawing shared by different skin
    tones shows none of them (OpenMoji's line art has no colour; sets fall back to one drawing
    for tone combinations they lack): its toned members go, toneless ones stay. (2) A drawing
    still shared by more than ``MAX_CONCEPTS_PER_DRAWING`` concepts (OpenMoji's line-art country
    flags are one empty rectangle) goes entirely. A few identical real flags (France, St. Martin)
    stay: their captions are all true.
    """
    groups: dict[tuple[str, bytes], list[str]] = {}
    for key in sorted(drawings):
        groups.setdefault((rows[key]["set"], drawings[key]), []).append(key)
    dropped: set[str] = set()
    for members in groups.values():
        if len({rows[k]["skin_tone"] for k in members}) > 1:
            toned = {k for k in members if rows[k]["skin_tone"]}
            dropped |= toned
            members = [k for k in members if k not in toned]
        if len({rows[k]["concept_id"] for k in members}) > MAX_CONCEPTS_PER_DRAWING:
            dropped.update(members)
    return dropped


def build_emoji_dataset(
    out_dir: str | os.PathLike[str],
    sources: Iterable[str | os.PathLike[str]],
    *,
    image_size: int = 64,
    sets: Sequence[str] | None = None,
    test_fraction: float = 0.05,
    overwrite: bool = False,
    drop_ambiguous: bool = True,
    progress: bool = False,
) -> EmojiBuildReport:
    """Build the dataset in ``out_dir`` from package tarballs/folders (see ``fetch_packages``).

    ``sets``: keys of ``EMOJI_SETS``; ``None`` builds every set the sources provide. Resumable and
    idempotent: each image is written through a temporary file + rename, and images already on disk
    are kept unless ``overwrite`` (metadata, licences and ``build.json`` are rewritten each run). An
    image that fails to render is logged, counted and left out. ``drop_ambiguous``: leave out
    drawings whose captions cannot be true (``ambiguous_drawings``).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
    concept_split("", test_fraction)  # validates test_fraction
    started = time.monotonic()
    out_dir = Path(out_dir)
    packages = open_packages(sources)
    available = [key for key, s in EMOJI_SETS.items() if s.package in packages]
    if sets is None:
        sets = available
    else:
        unknown = [s for s in sets if s not in EMOJI_SETS]
        if unknown:
            raise ValueError(f"sets: unknown {unknown}; choose from {sorted(EMOJI_SETS)}")
        missing = [s for s in sets if s not in available]
        if missing:
            raise ValueError(f"sets: {missing} requested but their packages are not among the sources")
    if not sets:
        raise ValueError(f"sources: none of the known emoji packages found ({sorted(DEFAULT_PACKAGES)})")

    previous = out_dir / "build.json"
    if previous.is_file() and not overwrite:
        previous_size = json.loads(previous.read_text()).get("image_size")
        if previous_size not in (None, image_size):
            raise ValueError(
                f"image_size: {out_dir} holds {previous_size}-px images; use another --out or overwrite"
            )

    catalogue = EmojiCatalogue(packages)
    report = EmojiBuildReport(
        image_size=image_size, test_fraction=test_fraction, drop_ambiguous=drop_ambiguous
    )
    report.packages = {p.name: p.version for p in packages.values()}
    rows: dict[str, dict[str, Any]] = {}
    drawings: dict[str, bytes] = {}  # key -> hash of the pixels
    images = list(enumerate_images(packages, sets, catalogue))
    for item in tqdm(images, desc="emoji", unit="img", disable=not progress):
        key = f"{item.set_key}/{item.codepoints.lower()}"
        if key in rows:
            report.duplicates += 1
            continue
        file_name = f"images/{key}.png"
        path = out_dir / file_name
        try:
            if path.is_file() and not overwrite:
                with Image.open(path) as image:
                    pixels = image.convert("RGB").tobytes()
                report.reused += 1
            else:
                image = item.render(image_size)
                pixels = image.tobytes()
                save_png(image, path)
                report.rendered += 1
        except Exception as error:  # a bad drawing must not end a 20k-image build
            report.failed += 1
            logger.warning("emoji %s: render failed (%s: %s)", key, type(error).__name__, error)
            continue
        drawings[key] = hashlib.blake2b(pixels, digest_size=16).digest()
        info = catalogue.describe(item.codepoints, item.fallback_name)
        if not info.name:
            info = EmojiInfo(**{**asdict(info), "name": item.codepoints.lower()})
        emoji_set = EMOJI_SETS[item.set_key]
        captions = caption_variants(info, emoji_set, key)
        base_info = catalogue.describe(info.concept_id, info.name)
        rows[key] = {
            "file_name": file_name,
            "text": choose_caption(captions, key),
            "captions": captions,
            "key": key,
            "set": item.set_key,
            "style": emoji_set.style,
            "license": emoji_set.license,
            "codepoints": item.codepoints,
            "name": info.name,
            "skin_tone": ", ".join(info.skin_tones),
            "category": info.category,
            "concept": base_info.name or info.name,
            "concept_id": info.concept_id,
            "split": concept_split(info.concept_id, test_fraction),
        }

    dropped = ambiguous_drawings(rows, drawings) if drop_ambiguous else set()
    for key in dropped:
        (out_dir / rows.pop(key)["file_name"]).unlink(missing_ok=True)
    report.dropped_ambiguous = len(dropped)
    ordered = [rows[key] for key in sorted(rows)]
    metadata = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered)
    atomic_write_bytes(out_dir / "metadata.jsonl", metadata.encode("utf-8"))
    write_licenses(out_dir, packages, sets)

    report.images = len(ordered)
    for row in ordered:
        report.per_set[row["set"]] = report.per_set.get(row["set"], 0) + 1
    report.emoji = len({row["codepoints"] for row in ordered})
    report.concepts = len({row["concept_id"] for row in ordered})
    report.test_images = sum(row["split"] == "test" for row in ordered)
    report.test_concepts = len({row["concept_id"] for row in ordered if row["split"] == "test"})
    report.seconds = round(time.monotonic() - started, 2)
    atomic_write_bytes(out_dir / "build.json", (json.dumps(asdict(report), indent=2) + "\n").encode())
    logger.info(
        "emoji dataset: %d images (%s), %d emoji, %d concepts (%d held out), %.1f s",
        report.images, report.per_set, report.emoji, report.concepts, report.test_concepts, report.seconds,
    )  # fmt: skip
    return report


def heldout_prompts(folder: str | os.PathLike[str], count: int) -> list[str]:
    """Prompts of the first ``count`` held-out concepts of an emoji dataset folder (file order).

    One prompt per concept, ``"{concept} emoji, {style}"`` with the style of its first row, skin-tone
    variants skipped: fixed prompts for sample grids of concepts no model was trained on.
    """
    prompts: list[str] = []
    seen: set[str] = set()
    with open(Path(folder) / "metadata.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("split") != "test" or row["concept"] in seen or row.get("skin_tone"):
                continue
            seen.add(row["concept"])
            prompts.append(f"{row['concept']} emoji, {row['style']}")
            if len(prompts) == count:
                break
    return prompts
