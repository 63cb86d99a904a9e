"""Split images (or reconstruction errors) at half the frequency band.

The low band is what survives halving the resolution (an area average of each 2x2 block) and
resampling back (bilinear); the high band is the rest. Both are signed and unclipped, so
``low_band(x) + high_band(x) == x`` exactly. ``scripts/rfid_sensitivity.py`` measures which band
a tokenizer's error lies in, and the tokenizer trainer's ``loss.high_band_weight`` penalises the
high band of the error on top of the plain L2 (rFID at 64 px punishes fine, structured error far
more than the same energy spread smoothly: docs/results/emoji64-latent16/, "rFID sensitivity").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def low_band(images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) → the same shape: area-halved, then bilinear back to S (S must be even)."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 2:
        raise ValueError(f"low_band: expected (B, C, S, S) with an even S, got {tuple(images.shape)}")
    size = images.shape[-1]
    small = F.interpolate(images, size=size // 2, mode="area")
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


def high_band(images: torch.Tensor) -> torch.Tensor:
    """What ``low_band`` removes: detail above half the band, signed."""
    return images - low_band(images)


def high_band_fraction(error: torch.Tensor) -> float:
    """Share of ``error``'s energy (B, C, S, S) above half the band: |high_band(e)|² / |e|²."""
    return float(high_band(error).pow(2).sum() / error.pow(2).sum().clamp_min(1e-12))
