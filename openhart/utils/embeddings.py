"""Sinusoidal embeddings of integer steps, shared by the diffusion head (timesteps) and the
transformer (scale levels): both run [cos | sin] features through Linear–SiLU–Linear."""

from __future__ import annotations

import math

import torch
from torch import nn

FREQUENCY_DIM = 256  # sinusoidal features fed to the MLP ([cos | sin], 128 each)
MAX_PERIOD = 10000


def timestep_features(timesteps: torch.Tensor, dim: int = FREQUENCY_DIM) -> torch.Tensor:
    """[cos(t·f) | sin(t·f)] with f_i = 10000^(−i/(dim/2)), i < dim/2; (N,) -> (N, dim) float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    angles = timesteps[:, None].float() * freqs[None]  # (N, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Integer step (N,) -> (N, W) through sinusoidal features and Linear–SiLU–Linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(timesteps).to(self.mlp[0].weight.dtype))
