"""Images as every training source prepares them, and what a source does with a broken one.

Transparency composited on white, the shorter side resized to S (LANCZOS when shrinking,
BICUBIC when enlarging), then a center crop; a sample is ``{"image": (3, S, S) float32 in
[-1, 1], "caption": str, "key": str}``. Corrupt or unreadable images never stop a run: they are
skipped, counted and logged (:class:`SkipLog`). S: image side (``image_size``).
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# Individual skip warnings stop after this many per source; a count keeps going in ``skipped``.
MAX_SKIP_WARNINGS = 20
# Errors that mean "this image is broken", as opposed to bugs in our code.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)

Sample = dict[str, Any]  # {"image": (3, S, S) tensor, "caption": str, "key": str}


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    return image_size


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB image with any transparency (RGBA, LA, palette with a transparent index) laid on white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def prepare_image(image: Image.Image, image_size: int) -> Image.Image:
    """Square RGB ``image_size`` image: composite on white, shorter side to S, center crop."""
    check_image_size(image_size)
    image = composite_on_white(image)
    width, height = image.size
    scale = image_size / min(width, height)
    if scale != 1.0:
        new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        # LANCZOS anti-aliases when shrinking; it rings when enlarging, where BICUBIC is the usual choice.
        resample = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
        image = image.resize(new_size, resample=resample)
        width, height = image.size
    left = (width - image_size) // 2
    top = (height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1] from an RGB PIL image."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, H, W)
    return tensor.float().div_(127.5).sub_(1.0)


def load_image(source: str | os.PathLike[str] | bytes, image_size: int) -> torch.Tensor:
    """Decode a file path or encoded bytes into a prepared (3, S, S) tensor in [-1, 1].

    Raises one of ``IMAGE_ERRORS`` for a corrupt or unreadable image.
    """
    check_image_size(image_size)
    handle: BinaryIO | str | os.PathLike[str] = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        # JPEG decoders can skip detail below the target size: a large speed-up on big photos.
        image.draft("RGB", (image_size, image_size))
        image.load()
        return image_to_tensor(prepare_image(image, image_size))


def caption_from_stem(name: str) -> str:
    """Fallback caption from a file name: ``red_fox-01.png`` -> ``red fox 01``."""
    stem = Path(name).name.split(".")[0]
    return " ".join(re.sub(r"[_\-]+", " ", stem).split())


class SkipLog:
    """Counts skipped items and warns about the first few (one list per source object)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0
        self.items: list[tuple[str, str]] = []

    def skip(self, item: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_SKIP_WARNINGS:
            self.items.append((item, reason))
            logger.warning("%s: skipping %s (%s)", self.source, item, reason)
        elif len(self.items) == MAX_SKIP_WARNINGS:
            self.items.append(("...", "further skips are counted, not logged"))
            logger.warning("%s: more skipped items; only counting from now on", self.source)
