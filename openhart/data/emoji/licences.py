"""Licences and attribution of a built emoji dataset: ``LICENSES.md`` and the ``LICENSES/`` texts.

Each image keeps the licence of its set; this module writes what each set is, its licence, the
attribution its licence asks for, and the licence texts (from the packages, or shipped here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from openhart.data.emoji.fetch import EmojiPackage
from openhart.data.emoji.sets import EMOJI_SETS
from openhart.utils.config import atomic_write_bytes

logger = logging.getLogger(__name__)

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
