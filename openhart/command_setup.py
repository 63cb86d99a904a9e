"""Command setup: the device and dtype a command runs on, the model it loads, the options they share.

Shared by every command-line entry point (``generate``, ``bench``, ``serve``, ``eval``, ...).
"""

from __future__ import annotations

import logging
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from openhart.errors import InvalidInputError, ModelLoadError, OpenHARTError
from openhart.loading import load, local_model_folder
from openhart.models.fast_path import SPEED_OPTIONS_NAME, SpeedOptions
from openhart.models.hart import HartPipeline
from openhart.presets import PRESETS
from openhart.utils.config import read_json
from openhart.utils.hardware import cpu_has_native_bf16
from openhart.validation import check_device

logger = logging.getLogger("openhart")


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


# Options shared by the commands that load a model (generate, serve, bench, ...).
TextEncoderOption = Annotated[
    str | None,
    typer.Option(
        "--text-encoder",
        help="Text model folder or repo id for the released layout (default: mit-han-lab/Qwen2-VL-1.5B-Instruct).",
    ),
]
RevisionOption = Annotated[
    str | None, typer.Option(help="Hub revision (branch, tag or commit) of a repo-id --model.")
]
RandomWeightsOption = Annotated[
    bool,
    typer.Option(
        "--random-weights", help="Random weights of a preset's architecture instead of its released ones."
    ),
]

QuantizeOption = Annotated[
    str | None,
    typer.Option("--quantize", help="int8: weight-only int8 transformer and text encoder (torchao)."),
]
# None means "the model's": a model may ship its own sampler defaults (sampler.json), and a
# command-line default would silently override them.
GuidanceOption = Annotated[
    float | None,
    typer.Option(
        min=0.0, help="CFG strength, 0 = no guidance (default: the model's sampler.json, else 4.5)."
    ),
]
SeedOption = Annotated[
    int | None,
    typer.Option(help="Seed of image 0; image i uses seed + i (0 <= seed < 2**63). Random when unset."),
]


def given_sampler_options(**options: object) -> dict[str, object]:
    """The sampler options a user gave (not None), as pipeline-call keyword arguments.

    Passing an unset option as None would replace the model's own value with "off".
    """
    return {name: value for name, value in options.items() if value is not None}


def check_unguided_option(value: int, pipeline: HartPipeline) -> None:
    """``--unguided-last-scales`` against the loaded model's scale count: an InvalidInputError if out of range."""
    from openhart.sampling import check_unguided_last_scales

    try:
        check_unguided_last_scales(value, pipeline.transformer.config.num_scales)
    except ValueError as error:
        raise InvalidInputError(f"--unguided-last-scales: {error}") from error


def apply_memory_options(pipeline: HartPipeline, quantize: str | None, offload_text_encoder: bool) -> None:
    """``--quantize`` and ``--offload-text-encoder``; a missing torchao is a DependencyError, a wrong value
    an InvalidInputError (one line at the CLI's error boundary)."""
    try:
        if quantize is not None:
            pipeline.quantize(quantize)
        if offload_text_encoder:
            pipeline.enable_text_encoder_offload()
    except OpenHARTError:
        raise
    except ValueError as error:
        raise InvalidInputError(f"--quantize/--offload-text-encoder: {error}") from error


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return check_device(choice, "--device")  # DependencyError naming what this machine has


# Below this much weight data a model's CPU time goes to per-operation overheads, where bfloat16
# only adds conversions (tiny: 0.51 vs 0.34 s per image), so ``auto`` keeps small models in float32
# on CPUs unless their speed.json says otherwise (``cpu_dtype``).
AUTO_BF16_MIN_WEIGHT_BYTES = 200 * 2**20


def resolve_dtype(choice: str, device: torch.device, model: str | None = None) -> torch.dtype:
    """``auto``: bfloat16 where the hardware computes it natively (CUDA, MPS, CPUs with AMX or
    AVX512-BF16), float32 elsewhere, where bf16 would be emulated and slower. On a native-bf16 CPU,
    the model's own ``cpu_dtype`` (its speed.json) decides; without one, bf16 for models large
    enough to gain (~3.7x faster than float32 at 512 px on a 2-core x86 CPU with AVX512-BF16).
    ``model`` is what the command loads (folder, preset, repo id; None: the embedded default)."""
    if choice == "auto":
        if device.type in ("cuda", "mps"):
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            declared = declared_cpu_dtype(model)
            if declared is not None:
                return getattr(torch, declared)
            if not is_small_model(model):
                return torch.bfloat16
        return torch.float32
    return getattr(torch, choice)


def declared_cpu_dtype(model: str | None) -> str | None:
    """The ``cpu_dtype`` in the speed.json of a local model folder (None: none declared)."""
    folder = local_model_folder(model)
    if folder is None or not (folder / SPEED_OPTIONS_NAME).is_file():
        return None
    return SpeedOptions.from_dict(read_json(folder / SPEED_OPTIONS_NAME)).cpu_dtype


def is_small_model(model: str | None) -> bool:
    """Whether ``model`` is the embedded default, ``tiny``, ``emoji-64`` or a folder with < 200 MiB of weights."""
    if model is None or model in ("tiny", "emoji-64"):
        return True
    path = Path(model)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*.safetensors")) < AUTO_BF16_MIN_WEIGHT_BYTES
    return False


def load_model(
    model: str | None,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    *,
    random_weights: bool = False,
    revision: str | None = None,
    text_encoder: str | None = None,
) -> HartPipeline:
    """:func:`openhart.load` for a command's ``--model`` (a HART model).

    Raises :class:`~openhart.errors.ModelLoadError` for a name that is none of what ``load``
    takes, and the hub's :class:`~openhart.hub.HubError` (a NetworkError) when the Hub cannot
    deliver; the CLI's error boundary prints either as one line.
    """
    from openhart.hub import HubError

    if model is not None and not model.strip():  # "" would otherwise mean the default model
        raise ModelLoadError("--model is empty: give a model folder, a preset name or a repo id")
    try:
        pipeline = load(
            model,
            device=device,
            dtype=dtype,
            kind="hart",
            random_weights=random_weights,
            seed=seed,
            revision=revision,
            text_encoder=text_encoder,
        )
    except HubError as error:
        if model in PRESETS:
            hint = "(or pass --random-weights for random weights of this architecture)"
            raise type(error)(f"{error} {hint}") from error
        raise
    assert isinstance(pipeline, HartPipeline)  # kind="hart"
    return pipeline


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
