"""Drawing emoji as S×S RGB images on white: package PNGs resized, SVGs rasterised with resvg.

Each ``*_renderer`` returns a function of the side S, so an image is drawn only when the build
writes it, at the size it asks for.

Dimensions: S image side.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageOps

from openhart.data.datasets import composite_on_white, prepare_image
from openhart.data.emoji.fetch import EmojiPackage


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


def png_renderer(package: EmojiPackage, relative: str) -> Callable[[int], Image.Image]:
    """Draws the package's PNG ``relative``: composited on white, resized and center-cropped."""

    def render(size: int) -> Image.Image:
        with Image.open(io.BytesIO(package.read(relative))) as image:
            image.load()
            return prepare_image(image, size)

    return render


def svg_file_renderer(package: EmojiPackage, relative: str) -> Callable[[int], Image.Image]:
    """Draws the package's SVG file ``relative`` with ``render_svg``."""
    return lambda size: render_svg(package.read(relative).decode("utf-8"), size)


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


def iconify_renderer(icon_set: dict[str, Any], icon: dict[str, Any]) -> Callable[[int], Image.Image]:
    """Draws one icon of an Iconify JSON set (its SVG body in the set's view box), with the
    rotation and flips of an alias applied."""

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
