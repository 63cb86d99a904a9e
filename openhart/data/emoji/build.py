"""The emoji dataset: openly licensed emoji sets rendered to small captioned RGB images.

Sources (npm packages, fetched with ``npm pack`` or passed as tarballs/folders):

| set              | package                           | licence      | images                     |
|------------------|-----------------------------------|--------------|----------------------------|
| noto             | emoji-datasource-google           | Apache-2.0   | 64-px PNGs                 |
| twemoji          | emoji-datasource-twitter          | CC-BY-4.0    | 64-px PNGs                 |
| openmoji-color   | openmoji                          | CC-BY-SA-4.0 | colour SVGs (resvg)        |
| openmoji-black   | openmoji                          | CC-BY-SA-4.0 | black line-art SVGs        |
| fluent-flat      | @iconify-json/fluent-emoji-flat   | MIT          | iconify JSON SVG bodies    |

The Apple and Facebook sets of emoji-datasource are never read (not openly licensed), nor are
OpenMoji's brand logos (trademarks, whatever the drawing's licence).

Output (``out_dir``): ``images/<set>/<codepoints>.png`` (S×S RGB, composited on white),
``metadata.jsonl`` in the Hugging Face imagefolder layout (``file_name``, ``text``, plus ``split``,
``concept``, ``captions``, ``set``, ``license``...), ``LICENSES.md`` + ``LICENSES/`` and
``build.json`` (counts, package versions). ``ImageFolderDataset(out_dir, S, split="train")``
reads it.

Names and keywords: the emoji's CLDR short name and keywords (from openmoji.json, which carries
them for every emoji, Unicode licence) and emoji-datasource's short names, for every set; OpenMoji's
own tags only in OpenMoji images' captions (they are CC-BY-SA like those images). Without the
OpenMoji package, names fall back to emoji-datasource's Unicode character names.

Drawings whose captions cannot be true are left out (``ambiguous_drawings``): skin-tone variants
that are pixel-identical to another tone (all of OpenMoji's line art, fallbacks elsewhere) and one
drawing standing for many concepts (OpenMoji's line-art country flags are one empty rectangle).

Concepts and the held-out split: an image's *emoji* is its codepoint sequence (skin tones
included); its *concept* is that sequence with skin-tone modifiers removed, so every tone and
every style of "waving hand" shares one concept. The split hashes the concept's codepoints
(``concept_split``): stable across runs, machines and source versions.

Dimensions: S image side (``image_size``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from tqdm import tqdm

from openhart.data.datasets import composite_on_white, prepare_image
from openhart.utils.config import atomic_write_bytes

logger = logging.getLogger(__name__)

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
# A drawing shared by more concepts than this (in one set) says nothing about any of them.
MAX_CONCEPTS_PER_DRAWING = 3
# OpenMoji subgroups left out: logos of companies and products (trademarks).
EXCLUDED_OPENMOJI_SUBGROUPS = frozenset({"brand"})

SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
TONE_BY_NAME = {name: code for code, name in SKIN_TONES.items()}
# Fluent icon names end in these for skin tones ("skier-medium-light"); longest first.
FLUENT_TONE_SUFFIXES = {
    "-medium-light": "1F3FC",
    "-medium-dark": "1F3FE",
    "-light": "1F3FB",
    "-medium": "1F3FD",
    "-dark": "1F3FF",
}
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

# {tone} is ", light skin tone" and {with_tone} " with light skin tone" (both empty without tones).
CAPTION_TEMPLATES = (
    "{name}{tone}, {keywords} — {style}",
    "{name} emoji{tone}, {style}",
    "emoji of {name}{with_tone} in {style}",
    "{name}{tone}, {category} emoji, {style}",
    "{style} emoji: {name}{tone}",
)


# --------------------------------------------------------------------------------------------
# Stable hashing, codepoints, split
# --------------------------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


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


# --------------------------------------------------------------------------------------------
# Packages: npm tarballs or folders
# --------------------------------------------------------------------------------------------

# Inside a package, the only files the builder reads (a tarball is filtered while streaming, so the
# sprite sheets and font sources never reach memory). Apple/Facebook image folders never match.
_USED_FILES = re.compile(
    r"^(?:[^/]+|data/[^/]+\.json|img/(?:google|twitter)/64/[^/]+\.png|(?:color|black)/svg/[^/]+\.svg)$"
)


class EmojiPackage:
    """The files of one npm package, from a ``.tgz`` (read once, filtered) or an unpacked folder."""

    def __init__(self, origin: Path, files: dict[str, bytes] | None = None, folder: Path | None = None):
        self.origin = origin
        self._files = files
        self._folder = folder
        meta = json.loads(self.read("package.json"))
        self.name: str = meta.get("name", "")
        self.version: str = meta.get("version", "")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EmojiPackage:
        path = Path(path)
        if path.is_dir():
            for folder in (path, path / "package"):
                if (folder / "package.json").is_file():
                    return cls(path, folder=folder)
            raise ValueError(f"sources: {path} has no package.json (nor package/package.json)")
        if path.is_file() and path.name.endswith((".tgz", ".tar.gz", ".tar")):
            files: dict[str, bytes] = {}
            with tarfile.open(path, mode="r|*") as archive:
                for member in archive:
                    # npm tarballs hold everything under one top folder ("package/"); drop it.
                    _, _, relative = member.name.lstrip("./").partition("/")
                    if member.isfile() and _USED_FILES.match(relative):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            files[relative] = handle.read()
            if "package.json" not in files:
                raise ValueError(f"sources: {path} is not an npm package tarball (no package.json)")
            return cls(path, files=files)
        raise ValueError(f"sources: {path} is neither a package folder nor a .tgz tarball")

    def read(self, relative: str) -> bytes:
        if self._files is not None:
            if relative not in self._files:
                raise FileNotFoundError(f"{self.origin}: no {relative}")
            return self._files[relative]
        assert self._folder is not None
        return (self._folder / relative).read_bytes()

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read(relative))

    def exists(self, relative: str) -> bool:
        if self._files is not None:
            return relative in self._files
        assert self._folder is not None
        return (self._folder / relative).is_file()

    def __repr__(self) -> str:
        return f"EmojiPackage({self.name}@{self.version} from {self.origin})"


def _tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_packages(
    cache_dir: str | os.PathLike[str],
    packages: dict[str, str] | None = None,
    npm: str = "npm",
) -> list[Path]:
    """Tarballs of ``packages`` (name -> version) in ``cache_dir``, fetched with ``npm pack`` when
    missing. Nothing is installed or executed from the packages."""
    packages = DEFAULT_PACKAGES if packages is None else packages
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarballs = []
    for package, version in packages.items():
        if package in FORBIDDEN_PACKAGES:
            raise ValueError(f"packages: {package} is not used ({FORBIDDEN_PACKAGES[package]})")
        target = cache_dir / _tarball_name(package, version)
        if not target.is_file():
            if shutil.which(npm) is None:
                raise RuntimeError(
                    f"npm not found: install Node.js, or download {package}@{version} and pass it with --sources"
                )
            logger.info("npm pack %s@%s -> %s", package, version, cache_dir)
            result = subprocess.run(
                [npm, "pack", f"{package}@{version}", "--pack-destination", str(cache_dir), "--silent"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 or not target.is_file():
                raise RuntimeError(f"npm pack {package}@{version} failed: {result.stderr.strip()[-800:]}")
        tarballs.append(target)
    return tarballs


def _expand_sources(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Package folders and tarballs; a folder that is not a package stands for its contents."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise ValueError(f"sources: {path} does not exist")
        is_package = (
            path.is_file() or (path / "package.json").is_file() or (path / "package/package.json").is_file()
        )
        if is_package:
            found.append(path)
            continue
        children = sorted(
            child
            for child in path.iterdir()
            if child.name.endswith((".tgz", ".tar.gz"))
            or (
                child.is_dir()
                and ((child / "package.json").is_file() or (child / "package/package.json").is_file())
            )
        )
        if not children:
            raise ValueError(f"sources: {path} holds no package folder or .tgz")
        found.extend(children)
    return found


def open_packages(sources: Iterable[str | os.PathLike[str]]) -> dict[str, EmojiPackage]:
    """Package name -> package for every source; forbidden or duplicated packages are errors."""
    packages: dict[str, EmojiPackage] = {}
    known = {s.package for s in EMOJI_SETS.values()}
    for path in _expand_sources(sources):
        package = EmojiPackage.open(path)
        if package.name in FORBIDDEN_PACKAGES:
            raise ValueError(
                f"sources: {path} is {package.name}, never used ({FORBIDDEN_PACKAGES[package.name]})"
            )
        if package.name not in known:
            logger.warning("sources: ignoring %s (not an emoji set this builder knows)", package)
            continue
        if package.name in packages:
            raise ValueError(f"sources: {package.name} given twice ({packages[package.name].origin}, {path})")
        packages[package.name] = package
    return packages


# --------------------------------------------------------------------------------------------
# Catalogue: names, keywords, categories by codepoints
# --------------------------------------------------------------------------------------------


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


def _slug(text: str) -> str:
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
                self.slugs.setdefault(_slug(row.get("annotation", "")), codepoints)
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
            keywords=_dedupe(keywords),
            openmoji_keywords=_dedupe(_split_list(openmoji.get("openmoji_tags")) if openmoji else []),
            category=category,
        )


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item.lower().strip(), None)
    return tuple(k for k in seen if k)


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


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
    keywords = [k for k in _dedupe(keywords) if not set(re.findall(r"[a-z0-9]+", k)) <= name_words]
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


# --------------------------------------------------------------------------------------------
# Images of each set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmojiImage:
    """One image to write: its set, its emoji, and how to draw it as RGB at a given size."""

    set_key: str
    codepoints: str
    render: Callable[[int], Image.Image]
    fallback_name: str = ""


def _png_renderer(package: EmojiPackage, relative: str) -> Callable[[int], Image.Image]:
    def render(size: int) -> Image.Image:
        with Image.open(io.BytesIO(package.read(relative))) as image:
            image.load()
            return prepare_image(image, size)

    return render


def render_svg(svg: str, size: int) -> Image.Image:
    """An SVG drawn by resvg to fit ``size``×``size`` (aspect kept, centered), on white."""
    import resvg_py  # optional dependency (the "train" extra); only SVG sets need it

    # No system fonts: emoji SVGs are paths, and fonts would make the output machine-dependent.
    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as drawn:
        drawn = drawn.convert("RGBA")
    if drawn.size != (size, size):
        canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        canvas.paste(drawn, ((size - drawn.width) // 2, (size - drawn.height) // 2))
        drawn = canvas
    return composite_on_white(drawn)


def _svg_file_renderer(package: EmojiPackage, relative: str) -> Callable[[int], Image.Image]:
    return lambda size: render_svg(package.read(relative).decode("utf-8"), size)


def _datasource_images(package: EmojiPackage, set_key: str, image_folder: str) -> Iterator[EmojiImage]:
    flag = f"has_img_{image_folder}"
    for entry in package.read_json("emoji.json"):
        variants = [entry, *(entry.get("skin_variations") or {}).values()]
        for variant in variants:
            # emoji-datasource marks images it only has through another set's fallback: skip those.
            relative = f"img/{image_folder}/64/{variant['image']}"
            if variant.get(flag) and package.exists(relative):
                yield EmojiImage(
                    set_key, normalize_codepoints(variant["unified"]), _png_renderer(package, relative)
                )


def _openmoji_images(package: EmojiPackage, set_key: str, folder: str) -> Iterator[EmojiImage]:
    for row in package.read_json("data/openmoji.json"):
        if row.get("subgroups") in EXCLUDED_OPENMOJI_SUBGROUPS:
            continue
        relative = f"{folder}/svg/{row['hexcode']}.svg"
        if package.exists(relative):
            yield EmojiImage(
                set_key, normalize_codepoints(row["hexcode"]), _svg_file_renderer(package, relative)
            )


def _iconify_svg(icon_set: dict[str, Any], icon: dict[str, Any], size: int) -> str:
    left, top = icon.get("left", icon_set.get("left", 0)), icon.get("top", icon_set.get("top", 0))
    width, height = (
        icon.get("width", icon_set.get("width", 16)),
        icon.get("height", icon_set.get("height", 16)),
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{size}" height="{size}" viewBox="{left} {top} {width} {height}">{icon["body"]}</svg>'
    )


def _iconify_renderer(icon_set: dict[str, Any], icon: dict[str, Any]) -> Callable[[int], Image.Image]:
    def render(size: int) -> Image.Image:
        image = render_svg(_iconify_svg(icon_set, icon, size), size)
        # Iconify aliases are transforms of their parent: quarter turns, then flips.
        image = image.rotate(-90 * int(icon.get("rotate", 0)))
        if icon.get("hFlip"):
            image = ImageOps.mirror(image)
        if icon.get("vFlip"):
            image = ImageOps.flip(image)
        return image

    return render


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
            codepoints = f"X-{_slug(name).upper()}"  # unknown to Unicode and to us: named by its slug
        yield EmojiImage("fluent-flat", codepoints, _iconify_renderer(icon_set, icon), name.replace("-", " "))


def enumerate_images(
    packages: dict[str, EmojiPackage], sets: Sequence[str], catalogue: EmojiCatalogue
) -> Iterator[EmojiImage]:
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


# --------------------------------------------------------------------------------------------
# Licences
# --------------------------------------------------------------------------------------------

_LICENSE_DATA = Path(__file__).resolve().parent / "licenses"

_ATTRIBUTION = {
    "noto": (
        "Noto Emoji, Copyright 2013 Google LLC and contributors, https://github.com/googlefonts/noto-emoji. "
        "Image resources are licensed under the Apache License, Version 2.0 (LICENSES/Apache-2.0.txt); "
        "flag images come from region-flags (public domain). Redistributed as 64-px PNGs by "
        "emoji-datasource-google (https://github.com/iamcal/emoji-data); modified here: composited "
        "on white and resized."
    ),
    "twemoji": (
        "Twemoji graphics, Copyright 2019 Twitter, Inc and other contributors (maintained fork: "
        "https://github.com/jdecked/twemoji), licensed under CC BY 4.0 "
        "(https://creativecommons.org/licenses/by/4.0/). Redistributed as 64-px PNGs by "
        "emoji-datasource-twitter; modified here: composited on white and resized."
    ),
    "openmoji": (
        "All emojis designed by OpenMoji – the open-source emoji and icon project "
        "(https://openmoji.org/). License: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/, "
        "full text in LICENSES/CC-BY-SA-4.0-openmoji.txt). Modified here: rendered from SVG, "
        "composited on white. The OpenMoji images of this dataset (set openmoji-color and "
        "openmoji-black) and their metadata rows are shared under the same licence."
    ),
    "fluent-flat": (
        "Fluent Emoji (flat), Copyright (c) Microsoft Corporation, https://github.com/microsoft/fluentui-emoji, "
        "MIT License (LICENSES/MIT-fluentui-emoji.txt). SVG bodies from the Iconify package "
        "@iconify-json/fluent-emoji-flat; rendered with resvg and composited on white."
    ),
}

_MIT_TEMPLATE = """MIT License

{copyright}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def write_licenses(out_dir: Path, packages: dict[str, EmojiPackage], sets: Sequence[str]) -> list[Path]:
    """``LICENSES.md`` (what each set is, its licence and attribution) and the licence texts."""
    written: list[Path] = []

    def put(relative: str, text: str) -> None:
        path = out_dir / relative
        atomic_write_bytes(path, text.encode("utf-8"))
        written.append(path)

    lines = [
        "# Licences and attribution",
        "",
        "This dataset collects images from several openly licensed emoji sets. Each image keeps the",
        "licence of its set; `metadata.jsonl` names it per row (`set`, `license`). The Apple and",
        "Facebook emoji sets are not included, nor are OpenMoji's brand logos.",
        "",
        "| set | package | licence | images |",
        "|---|---|---|---|",
    ]
    for set_key in sets:
        emoji_set = EMOJI_SETS[set_key]
        package = packages[emoji_set.package]
        lines.append(
            f"| {set_key} | {package.name}@{package.version} | {emoji_set.license} | `images/{set_key}/` |"
        )
    lines += ["", "## Attribution", ""]
    for attribution_key in dict.fromkeys("openmoji" if s.startswith("openmoji") else s for s in sets):
        lines += [f"- **{attribution_key}**: {_ATTRIBUTION[attribution_key]}", ""]
    lines += [
        "## Captions",
        "",
        "Emoji names and keywords are Unicode CLDR annotations (Copyright © Unicode, Inc., Unicode",
        "License v3, https://www.unicode.org/license.txt), read from OpenMoji's `openmoji.json`;",
        "short names and categories come from emoji-datasource (https://github.com/iamcal/emoji-data,",
        "MIT, LICENSES/MIT-emoji-datasource.txt). OpenMoji's own tags appear only in the captions",
        "of OpenMoji images.",
        "",
    ]
    put("LICENSES.md", "\n".join(lines))

    if "noto" in sets:
        apache = _LICENSE_DATA / "Apache-2.0.txt"
        if apache.is_file():
            put("LICENSES/Apache-2.0.txt", apache.read_text(encoding="utf-8"))
        else:
            logger.warning("licence text %s missing from the package; LICENSES.md links it only", apache)
    for name in ("emoji-datasource-google", "emoji-datasource-twitter"):
        if name in packages and packages[name].exists("LICENSE"):
            put("LICENSES/MIT-emoji-datasource.txt", packages[name].read("LICENSE").decode("utf-8"))
            break
    if any(s.startswith("openmoji") for s in sets) and packages["openmoji"].exists("LICENSE.txt"):
        put("LICENSES/CC-BY-SA-4.0-openmoji.txt", packages["openmoji"].read("LICENSE.txt").decode("utf-8"))
    if "fluent-flat" in sets:
        put(
            "LICENSES/MIT-fluentui-emoji.txt",
            _MIT_TEMPLATE.format(copyright="Copyright (c) Microsoft Corporation."),
        )
    return written


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


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


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


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
                atomic_write_bytes(path, _encode_png(image))
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
