"""The known degradations of scripts/rfid_sensitivity.py, against direct float64 recomputation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rfid_sensitivity.py"
spec = importlib.util.spec_from_file_location("rfid_sensitivity", SCRIPT)
sensitivity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sensitivity)


def test_blur_is_a_normalised_gaussian_with_reflected_edges():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = 1.0
    blurred = sensitivity.gaussian_blur(sigma)(images)
    assert blurred.shape == images.shape
    # Direct 2-D sum in float64 at an interior pixel, where no reflection is involved.
    radius = 3
    weights = {
        (dy, dx): math.exp(-(dy * dy + dx * dx) / (2 * sigma**2))
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
    }
    total = sum(weights.values())
    y, x = 8, 7
    for channel in range(3):
        expected = (
            sum(w * float(images[1, channel, y + dy, x + dx]) for (dy, dx), w in weights.items()) / total
        )
        assert abs(float(blurred[1, channel, y, x]) - expected) < 1e-5
    # A flat image stays flat, edges included (the kernel sums to one, the edges reflect).
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(sensitivity.gaussian_blur(0.75)(flat), flat, atol=1e-6)


def test_noise_is_seeded_and_clipped_and_down_up_keeps_flat_images():
    images = torch.full((4, 3, 8, 8), 0.5)
    first = sensitivity.gaussian_noise(0.1, seed=3)(images)
    again = sensitivity.gaussian_noise(0.1, seed=3)(images)
    assert torch.equal(first, again)
    assert 0.08 < float((first - images).std()) < 0.12
    assert float(sensitivity.gaussian_noise(5.0, seed=0)(images).min()) == 0.0  # clipped to [0, 1]
    assert torch.allclose(sensitivity.down_up(images), images)
    # A one-pixel checkerboard is above half the band: down-up flattens it to its mean.
    checker = ((torch.arange(8).view(1, -1) + torch.arange(8).view(-1, 1)) % 2).float().expand(1, 3, 8, 8)
    assert torch.allclose(sensitivity.down_up(checker), torch.full_like(checker, 0.5))
