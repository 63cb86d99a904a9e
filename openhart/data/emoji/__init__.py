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

Modules, by job: ``sets`` (the sets, their packages and licences), ``fetch`` (npm tarballs and
reading a package), ``catalogue`` (codepoints, concepts, the split, names and keywords),
``captions``, ``images`` (the drawings each set holds), ``render`` (PNG and SVG to RGB),
``licences`` (``LICENSES.md``) and ``build`` (the dataset, ``metadata.jsonl``, ``build.json``).

Dimensions: S image side (``image_size``).
"""

from openhart.data.emoji.build import (
    EmojiBuildReport,
    ambiguous_drawings,
    build_emoji_dataset,
    heldout_prompts,
)
from openhart.data.emoji.catalogue import (
    concept_split,
    normalize_codepoints,
)
from openhart.data.emoji.fetch import (
    EmojiPackage,
    fetch_packages,
    open_packages,
)
from openhart.data.emoji.sets import (
    DEFAULT_PACKAGES,
    EMOJI_SETS,
    FORBIDDEN_PACKAGES,
    EmojiSet,
)

__all__ = [
    "DEFAULT_PACKAGES",
    "EMOJI_SETS",
    "FORBIDDEN_PACKAGES",
    "EmojiBuildReport",
    "EmojiPackage",
    "EmojiSet",
    "ambiguous_drawings",
    "build_emoji_dataset",
    "concept_split",
    "fetch_packages",
    "heldout_prompts",
    "normalize_codepoints",
    "open_packages",
]
