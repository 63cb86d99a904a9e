"""Where a command runs and what it loads: device and dtype choices, model folders and presets.

Shared by every command-line entry point (``generate``, ``bench``, ``serve``, ``eval``, ...).
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from pathlib import Path

import torch
import typer

from openhart.pipeline import HartPipeline
from openhart.presets import PRESETS, build_pipeline

logger = logging.getLogger("openhart")

# Where trained weights of a preset ship inside the package (the embedded default model lands here).
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "emoji-64"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DtypeChoice(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise typer.BadParameter("Apple MPS is not available on this machine", param_hint="--device")
    return torch.device(choice)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        # bf16 halves memory and is fast on GPUs; on CPUs fp32 is the safe default.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, choice)


def load_model(model: str | None, device: torch.device, dtype: torch.dtype, seed: int = 0) -> HartPipeline:
    """A model folder, a preset with shipped weights, or a preset with random weights (with a warning)."""
    name = model or DEFAULT_MODEL
    path = Path(name)
    if path.is_dir():
        return HartPipeline.from_pretrained(path, device=device, dtype=dtype)
    if name in PRESETS:
        shipped = PACKAGED_WEIGHTS / name
        if shipped.is_dir():
            return HartPipeline.from_pretrained(shipped, device=device, dtype=dtype)
        if model is None:
            raise typer.BadParameter(
                f"the embedded default model {DEFAULT_MODEL!r} is not trained and shipped yet; "
                "pass --model with a saved model folder or a preset name (random weights)",
                param_hint="--model",
            )
        logger.warning("preset %r has no trained weights here: using RANDOM weights (seed %d)", name, seed)
        return build_pipeline(name, seed=seed, device=device, dtype=dtype)
    raise typer.BadParameter(
        f"{name!r} is neither a model folder nor a preset (presets: {', '.join(sorted(PRESETS))})",
        param_hint="--model",
    )


def compile_and_warm_up(pipeline: HartPipeline) -> float:
    """``pipeline.compile()``, then one image, so compiling and capturing happen now; returns seconds.

    For long-running processes (``openhart serve --compile``): the first call of each batch size
    compiles (tens of seconds on a GPU) and captures CUDA graphs; the warm-up pays that for one
    image before the first request instead of during it. Larger batches still compile on first use.
    """
    started = time.perf_counter()
    pipeline.compile()
    pipeline("warm-up", generator=torch.Generator().manual_seed(0), output_type="pt")
    seconds = time.perf_counter() - started
    logger.info("compiled and warmed up in %.1f s", seconds)
    return seconds
