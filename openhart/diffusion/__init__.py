"""Residual diffusion: the per-token MLP head and its Gaussian diffusion schedule/sampler."""

from openhart.diffusion.head import DiffusionHeadConfig, ResidualDiffusionHead
from openhart.diffusion.schedule import DiffusionSchedule

__all__ = ["DiffusionHeadConfig", "DiffusionSchedule", "ResidualDiffusionHead"]
