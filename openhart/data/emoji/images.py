"""The images of each emoji set: which drawings a package holds, under which codepoints.

emoji-datasource's PNGs (noto, twemoji), OpenMoji's SVG files (colour and line art, brand logos
left out) and the Iconify JSON of Fluent Emoji (flat), whose icons are matched to codepoints by
name. Each image carries a renderer (``render``) that draws it on demand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from openhart.data.emoji.catalogue import EmojiCatalogue, normalize_codepoints, slugify
from openhart.data.emoji.fetch import EmojiPackage
from openhart.data.emoji.render import iconify_renderer, png_renderer, svg_file_renderer
from openhart.data.emoji.sets import EMOJI_SETS, EXCLUDED_OPENMOJI_SUBGROUPS

# Fluent icon names end in these for skin tones ("skier-medium-light"); longest first.
FLUENT_TONE_SUFFIXES = {
    "-medium-light": "1F3FC",
    "-medium-dark": "1F3FE",
    "-light": "1F3FB",
    "-medium": "1F3FD",
    "-dark": "1F3FF",
}


@dataclass(frozen=True)
class EmojiImage:
    """One image to write: its set, its emoji, and how to draw it as RGB at a given size."""

    set_key: str
    codepoints: str
    render: Callable[[int], Image.Image]
    fallback_name: str = ""


def _datasource_images(package: EmojiPackage, set_key: str, image_folder: str) -> Iterator[EmojiImage]:
    flag = f"has_img_{image_folder}"
    for entry in package.read_json("emoji.json"):
        variants = [entry, *(entry.get("skin_variations") or {}).values()]
        for variant in variants:
            # emoji-datasource marks images it only has through another set's fallback: skip those.
            relative = f"img/{image_folder}/64/{variant['image']}"
            if variant.get(flag) and package.exists(relative):
                yield EmojiImage(
                    set_key, normalize_codepoints(variant["unified"]), png_renderer(package, relative)
                )


def _openmoji_images(package: EmojiPackage, set_key: str, folder: str) -> Iterator[EmojiImage]:
    for row in package.read_json("data/openmoji.json"):
        if row.get("subgroups") in EXCLUDED_OPENMOJI_SUBGROUPS:
            continue
        relative = f"{folder}/svg/{row['hexcode']}.svg"
        if package.exists(relative):
            yield EmojiImage(
                set_key, normalize_codepoints(row["hexcode"]), svg_file_renderer(package, relative)
            )


def _fluent_codepoints(name: str, by_name: dict[str, str], catalogue: EmojiCatalogue) -> str | None:
    """Codepoints of a Fluent icon: its ``chars.json`` entry, a CLDR name match, or (for the skin
    tones Fluent draws but Unicode lacks, e.g. ``skier-light``) the base emoji with the modifier
    after its first codepoint — a made-up but consistent sequence with the right concept."""
    if name in by_name:
        return by_name[name]
    if name in catalogue.slugs:
        return catalogue.slugs[name]
    for suffix, tone in FLUENT_TONE_SUFFIXES.items():
        if name.endswith(suffix):
            base = _fluent_codepoints(name.removesuffix(suffix), by_name, catalogue)
            if base is not None:
                first, *rest = base.split("-")
                return "-".join([first, tone, *rest])
    return None


def _fluent_images(package: EmojiPackage, catalogue: EmojiCatalogue) -> Iterator[EmojiImage]:
    icon_set = package.read_json("icons.json")
    chars = package.read_json("chars.json") if package.exists("chars.json") else {}
    by_name = {icon: normalize_codepoints(code) for code, icon in sorted(chars.items())}
    icons = dict(icon_set.get("icons", {}))
    for alias, spec in sorted(icon_set.get("aliases", {}).items()):
        parent = icons.get(spec.get("parent"))
        transforms = {k: v for k, v in spec.items() if k in ("hFlip", "vFlip", "rotate")}
        # An alias without a transform is the parent's drawing under another name: not a new image.
        if parent is not None and transforms:
            icons[alias] = {**parent, **transforms}
    for name, icon in sorted(icons.items()):
        codepoints = _fluent_codepoints(name, by_name, catalogue)
        if codepoints is None:
            codepoints = f"X-{slugify(name).upper()}"  # unknown to Unicode and to us: named by its slug
        yield EmojiImage("fluent-flat", codepoints, iconify_renderer(icon_set, icon), name.replace("-", " "))


def enumerate_images(
    packages: dict[str, EmojiPackage], sets: Sequence[str], catalogue: EmojiCatalogue
) -> Iterator[EmojiImage]:
    """Every image the packages hold for ``sets``, set by set in ``sets`` order."""
    for set_key in sets:
        package = packages[EMOJI_SETS[set_key].package]
        if set_key == "noto":
            yield from _datasource_images(package, set_key, "google")
        elif set_key == "twemoji":
            yield from _datasource_images(package, set_key, "twitter")
        elif set_key == "openmoji-color":
            yield from _openmoji_images(package, set_key, "color")
        elif set_key == "openmoji-black":
            yield from _openmoji_images(package, set_key, "black")
        elif set_key == "fluent-flat":
            yield from _fluent_images(package, catalogue)
