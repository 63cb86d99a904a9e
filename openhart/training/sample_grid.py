"""A trainer's sample grid: the recipe's fixed prompts drawn from fixed seeds, one PNG per step."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from openhart.training.loop import SAMPLES_DIR
from openhart.utils.images import save_png, tensor_grid

logger = logging.getLogger(__name__)


@torch.no_grad()
def write_sample_grid(
    pipeline: Any, sampling: Any, out_dir: Path, step: int, **call_options: Any
) -> Path | None:
    """Grid of the recipe's fixed prompts (image i from seed + i: comparable across steps)."""
    if not sampling.prompts:
        return None
    generators = [torch.Generator().manual_seed(sampling.seed + i) for i in range(len(sampling.prompts))]
    images = pipeline(
        list(sampling.prompts),
        guidance_scale=sampling.guidance_scale,
        num_inference_steps=sampling.num_inference_steps,
        generator=generators,
        output_type="pt",
        **call_options,
    ).images  # (N, 3, S, S) in [0, 1]
    columns = math.ceil(math.sqrt(len(sampling.prompts)))
    path = save_png(tensor_grid(images, columns), out_dir / SAMPLES_DIR / f"step-{step:07d}.png")
    logger.info("step %d: sample grid %s", step, path)
    return path
