"""Image grids and atomic PNG files, shared by the commands, the trainers' sample grids and the scripts."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from openhart.errors import StorageError
from openhart.utils.config import atomic_write_bytes


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG atomically (a temp file renamed into place), so no half-written file is left.

    An unwritable path (a full disk, a folder that went away) is a :class:`StorageError` naming it.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as error:
        raise StorageError(f"cannot write {path}: {error.strerror or error}") from error
    return Path(path)


def pil_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Same-size PIL images on a white canvas, ``columns`` per row (default: a near square)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def tensor_grid(images: torch.Tensor, columns: int) -> Image.Image:
    """A PIL grid of images (N, 3, S, S) with values in [0, 1], ``columns`` per row."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, S, S), got {tuple(images.shape)}")
    n, _, height, width = images.shape
    rows = math.ceil(n / columns)
    canvas = torch.ones(3, rows * height, columns * width)
    for index, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        r, c = divmod(index, columns)
        canvas[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    array = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(array)
