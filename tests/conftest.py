"""Shared fixtures: a tiny pipeline whose weights are perturbed so that no branch is zero or identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openhart.models.hart import HartPipeline
from openhart.presets import build_pipeline

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add N(0, scale²) to every floating parameter: zero-initialised gates and heads become live."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def make_tiny_pipeline(seed: int = 0) -> HartPipeline:
    pipeline = build_pipeline("tiny", seed=seed)
    for index, module in enumerate(pipeline.components.values()):
        perturb_(module, seed=seed * 10 + index)
    return pipeline


@pytest.fixture(scope="session")
def tiny_pipeline() -> HartPipeline:
    return make_tiny_pipeline()


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]
