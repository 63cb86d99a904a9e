"""Rotary position embeddings for the context prefix (1-D) and the image-token pyramid (2-D).

Legend: B batch, L positions, H heads, d head dim, P side of the largest scale, pn side of one scale.

Every table here has the layout that ``rotate_half`` expects: channel ``c`` is paired with channel
``c + d/2`` and ``y = x * cos + rotate_half(x) * sin``.

Image tokens get *2-D* positions: token (i, j) of a pn x pn scale sits at row ``i * P / pn + o`` and
column ``j * P / pn + o``, i.e. every scale's grid is stretched over the largest one, so the same
image location has the same position at every scale (and the resolution can change). ``o`` is the
position id of the last context token, so image positions continue after the prompt.

Two 2-D layouts exist:

* ``"hart"`` — the released model's layout. Channels ``c < d/2`` take row angles and channels
  ``c >= d/2`` take column angles, each with frequencies ``theta^(-4i/d)``, i < d/4. Because
  ``rotate_half`` pairs ``c`` with ``c + d/2``, every pair mixes a row angle with a column angle
  (not a true rotation). Needed to run the released checkpoints.
* ``"axial"`` — a proper axial 2-D RoPE: the first half of the channels rotates by row, the second
  half by column, each as a 1-D RoPE of dimension d/2 (relative in both axes). Our default for new models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Rope(NamedTuple):
    """Rotation tables of one pass: cos/sin (B, L, d); the first ``num_context`` positions are prompt tokens."""

    cos: torch.Tensor
    sin: torch.Tensor
    num_context: int


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, d); cos/sin (B, L, d) → rotated x, computed in x's dtype."""
    cos = cos.unsqueeze(1).to(x.dtype)  # (B, 1, L, d)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def apply_axial_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Axial 2-D RoPE: each half of the channels is an independent 1-D RoPE (row half, column half)."""
    row_half, col_half = x.chunk(2, dim=-1)
    cos_row, cos_col = cos.chunk(2, dim=-1)
    sin_row, sin_col = sin.chunk(2, dim=-1)
    return torch.cat(
        (apply_rotary(row_half, cos_row, sin_row), apply_rotary(col_half, cos_col, sin_col)), dim=-1
    )


def rope_1d_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """positions (B, L) float → angles (B, L, d), standard half-split layout."""
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim
    )
    angles = positions.double().unsqueeze(-1) * inv_freq  # (B, L, d/2)
    return torch.cat((angles, angles), dim=-1).float()


def scale_grid(
    patch_nums: Sequence[int], scales: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates, stretched to the largest scale, for the tokens of ``scales``.

    Returns two (l,) float64 tensors, scales concatenated in order, each flattened row-major.
    """
    largest = patch_nums[-1]
    rows, cols = [], []
    for k in scales:
        pn = patch_nums[k]
        coords = torch.arange(pn, dtype=torch.float64, device=device) * (largest / pn)
        rows.append(coords.repeat_interleave(pn))  # row i repeated for each column
        cols.append(coords.repeat(pn))
    return torch.cat(rows), torch.cat(cols)


def rope_2d_angles(
    rows: torch.Tensor, cols: torch.Tensor, offset: torch.Tensor, head_dim: int, theta: float
) -> torch.Tensor:
    """rows/cols (l,) and offset (B,) → angles (B, l, d) for image tokens.

    The table is [row angles, row angles, column angles, column angles] (each d/4 wide, frequencies
    theta^(-4i/d)). Both layouts share it; they differ only in which channels are rotated together
    (``apply_rotary`` for "hart", ``apply_axial_rotary`` for "axial").
    """
    quarter = head_dim // 4
    inv_freq = theta ** (-4.0 * torch.arange(quarter, dtype=torch.float64, device=rows.device) / head_dim)
    row_pos = rows.unsqueeze(0) + offset.double().unsqueeze(1)  # (B, l)
    col_pos = cols.unsqueeze(0) + offset.double().unsqueeze(1)
    row_angles = row_pos.unsqueeze(-1) * inv_freq  # (B, l, d/4)
    col_angles = col_pos.unsqueeze(-1) * inv_freq
    return torch.cat((row_angles, row_angles, col_angles, col_angles), dim=-1).float()
