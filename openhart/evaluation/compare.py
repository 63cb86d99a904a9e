"""Speed of HART against its baselines on one device in one run: latency, throughput, MACs, memory.

For each model (HART, VAR-only = HART without the residual head, latent diffusion at one or more
step counts): batch-1 latency and batch-B throughput from
:func:`~openhart.evaluation.benchmark.benchmark_pipeline` (medians, device synchronised),
multiply-accumulates of one batch-1 call counted with ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions, attention; MACs = FLOPs / 2; elementwise ops are not counted), peak
memory, parameters, and every number's ratio to HART. HART's batch-1 latency is also broken down
per stage (text encoder, each scale, residual, decode).

Peak memory: on CUDA, ``max_memory_allocated`` during the model's runs; on Linux CPUs the peak
resident set size of the process during the model's runs (the kernel's high-water mark is reset
before each model through ``/proc/self/clear_refs``), which includes the memory every loaded
model and library already holds; elsewhere the process peak since start (then only the first
model's figure is its own).

Model names: ``hart``, ``var``, ``diffusion`` (its config's step count) and ``diffusion@N``
(N sampler steps), e.g. ``hart,var,diffusion@20,diffusion@50``.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from openhart.evaluation.benchmark import BenchmarkResult, benchmark_pipeline, synchronize
from openhart.models import (
    LatentDiffusionPipeline,
    VarOnlyPipeline,
    var_only,
)
from openhart.models.hart import HartPipeline
from openhart.presets import build_diffusion_baseline

logger = logging.getLogger(__name__)

REFERENCE = "hart"
_MODEL_NAME = re.compile(r"^(hart|var|diffusion)(?:@(\d+))?$")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass
class ModelSpeed:
    """One model's row of the comparison."""

    name: str
    kind: str  # hart / var / diffusion
    num_inference_steps: int  # residual-head steps (HART) or sampler steps (diffusion); 0 for VAR
    parameters: int  # all components, text encoder and tokenizer included
    generator_parameters: int  # what generates: transformer + head, or the diffusion transformer
    latency_seconds: float  # one image (batch 1), median
    throughput_images_per_second: float  # at batch `throughput_batch_size`
    throughput_batch_size: int
    macs_per_image: int  # one batch-1 call, CFG included
    peak_memory_bytes: int
    peak_memory_kind: str
    # What the model's runs added on top of what the process held before them (weights included
    # on CUDA, where they are allocated before; on CPU RSS, only activations and workspaces).
    peak_memory_added_bytes: int
    stage_seconds: dict[str, float] = field(default_factory=dict)  # batch-1 breakdown

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    device: str
    dtype: str
    guidance_scale: float
    repeats: int
    models: list[ModelSpeed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "guidance_scale": self.guidance_scale,
            "repeats": self.repeats,
            "reference": REFERENCE,
            "models": [m.to_dict() for m in self.models],
            "ratios_to_hart": self.ratios(),
        }

    @property
    def reference(self) -> ModelSpeed | None:
        return next((m for m in self.models if m.kind == REFERENCE), None)

    def ratios(self) -> dict[str, dict[str, float]]:
        """Per model: latency, throughput, MACs and memory divided by HART's (empty without HART)."""
        ref = self.reference
        if ref is None:
            return {}
        return {
            m.name: {
                "latency": m.latency_seconds / ref.latency_seconds,
                "throughput": m.throughput_images_per_second / ref.throughput_images_per_second,
                "macs": m.macs_per_image / ref.macs_per_image if ref.macs_per_image else float("nan"),
                "peak_memory": m.peak_memory_bytes / ref.peak_memory_bytes
                if ref.peak_memory_bytes
                else float("nan"),
            }
            for m in self.models
        }

    def table(self) -> str:
        """A Markdown table with ratios to HART, then HART's per-stage breakdown."""
        ratios = self.ratios()
        batch = self.models[0].throughput_batch_size if self.models else 0

        def ratio(name: str, key: str) -> str:
            return f" ({ratios[name][key]:.2f}×)" if name in ratios else ""

        lines = [
            f"device {self.device} | dtype {self.dtype} | guidance {self.guidance_scale} | median of {self.repeats}",
            "",
            f"| model | steps | params (gen.) | latency b=1 (× HART) | img/s b={batch} (× HART) "
            "| GMACs / image (× HART) | peak memory (+ added) (× HART) |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in self.models:
            lines.append(
                f"| {m.name} | {m.num_inference_steps} | {m.generator_parameters / 1e6:.2f} M "
                f"| {1e3 * m.latency_seconds:.1f} ms{ratio(m.name, 'latency')} "
                f"| {m.throughput_images_per_second:.2f}{ratio(m.name, 'throughput')} "
                f"| {m.macs_per_image / 1e9:.4g}{ratio(m.name, 'macs')} "
                f"| {m.peak_memory_bytes / 2**20:.0f} MiB (+{m.peak_memory_added_bytes / 2**20:.0f})"
                f"{ratio(m.name, 'peak_memory')} |"
            )
        lines.append(f"\npeak memory: {self.models[0].peak_memory_kind}" if self.models else "")
        ref = self.reference
        if ref is not None and ref.stage_seconds:
            total = sum(ref.stage_seconds.values()) or 1.0
            lines += ["", "HART batch-1 latency per stage:", "", "| stage | ms | share |", "|---|---|---|"]
            for stage, seconds in ref.stage_seconds.items():
                lines.append(f"| {stage} | {1e3 * seconds:.2f} | {100 * seconds / total:.1f}% |")
            scales = sum(s for n, s in ref.stage_seconds.items() if n.startswith("scale_"))
            lines.append(f"| all scales | {1e3 * scales:.2f} | {100 * scales / total:.1f}% |")
        return "\n".join(lines)


# ---------------------------------------------------------------------- measuring
def parse_model_names(names: str | list[str]) -> list[tuple[str, str, int | None]]:
    """``"hart,var,diffusion@50"`` → [(name, kind, steps or None)]; ValueError naming a bad entry."""
    items = names.split(",") if isinstance(names, str) else list(names)
    parsed = []
    for item in (i.strip() for i in items):
        match = _MODEL_NAME.match(item)
        if match is None:
            raise ValueError(f"models: {item!r} is not one of hart, var, diffusion, diffusion@STEPS")
        kind, steps = match.group(1), match.group(2)
        if steps is not None and kind != "diffusion":
            raise ValueError(f"models: only diffusion takes @STEPS, got {item!r}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"models: steps must be ≥ 1 in {item!r}")
        parsed.append((item, kind, int(steps) if steps is not None else None))
    if not parsed:
        raise ValueError("models: name at least one model")
    if len({name for name, _, _ in parsed}) != len(parsed):
        raise ValueError(f"models: duplicate entries in {names!r}")
    return parsed


def count_macs(
    pipeline: Any, guidance_scale: float = 4.5, num_inference_steps: int | None = None, seed: int = 0
) -> int:
    """Multiply-accumulates of one batch-1 call (FLOPs counted by FlopCounterMode, halved)."""
    counter = FlopCounterMode(display=False)
    with counter:
        pipeline(
            "a photo of a red fox in the snow",
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            use_cuda_graphs=False,  # a replayed graph runs no Python-visible ops to count
        )
    return counter.get_total_flops() // 2


def _read_status_bytes(field_name: str) -> int | None:
    """A memory field of /proc/self/status (``VmHWM`` peak RSS, ``VmRSS`` current) in bytes."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the process's peak-RSS mark (Linux ≥ 4.0); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _default_steps(pipeline: Any) -> int:
    if isinstance(pipeline, LatentDiffusionPipeline):
        return pipeline.config.num_inference_steps
    return pipeline.diffusion_head.config.num_inference_steps


def _generator_parameters(pipeline: Any, kind: str) -> int:
    if kind == "diffusion":
        return sum(p.numel() for p in pipeline.transformer.parameters())
    modules = [pipeline.transformer] + ([pipeline.diffusion_head] if kind == "hart" else [])
    return sum(p.numel() for module in modules for p in module.parameters())


def measure_model(
    name: str,
    kind: str,
    pipeline: Any,
    *,
    num_inference_steps: int | None = None,
    throughput_batch_size: int = 16,
    guidance_scale: float = 4.5,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> ModelSpeed:
    """Benchmark one model (batch 1 and batch ``throughput_batch_size``), count its MACs and memory."""
    steps = num_inference_steps or _default_steps(pipeline)
    device = pipeline.device
    reset = device.type == "cpu" and _reset_hwm()
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _read_status_bytes("VmRSS") or 0
    options = {
        "preset": name,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "warmup": warmup,
        "repeats": repeats,
        "seed": seed,
    }
    single: BenchmarkResult = benchmark_pipeline(pipeline, batch_size=1, **options)
    peak, kind_of_peak = single.peak_memory_bytes, single.peak_memory_kind
    batched: BenchmarkResult = benchmark_pipeline(pipeline, batch_size=throughput_batch_size, **options)
    if device.type == "cuda":
        # Each benchmark_pipeline call resets the CUDA peak; keep the larger of the two runs.
        peak = max(peak, batched.peak_memory_bytes)
    elif reset and (hwm := _read_status_bytes("VmHWM")) is not None:
        peak, kind_of_peak = (
            hwm,
            "process peak RSS during this model's runs (high-water mark reset per model)",
        )
    else:
        peak, kind_of_peak = (
            batched.peak_memory_bytes,
            "process peak RSS since start (not reset between models)",
        )
    synchronize(device)
    macs = count_macs(pipeline, guidance_scale, steps, seed)
    return ModelSpeed(
        name=name,
        kind=kind,
        num_inference_steps=0 if kind == "var" else steps,
        parameters=sum(pipeline.num_parameters().values()),
        generator_parameters=_generator_parameters(pipeline, kind),
        latency_seconds=single.latency_seconds,
        throughput_images_per_second=throughput_batch_size / batched.latency_seconds,
        throughput_batch_size=throughput_batch_size,
        macs_per_image=int(macs),
        peak_memory_bytes=int(peak),
        peak_memory_kind=kind_of_peak,
        peak_memory_added_bytes=max(int(peak) - before, 0),
        stage_seconds=dict(single.stage_seconds),
    )


def compare_pipelines(
    hart: HartPipeline | None,
    diffusion: LatentDiffusionPipeline | None,
    models: str | list[str] = "hart,var,diffusion",
    *,
    throughput_batch_size: int = 16,
    guidance_scale: float = 4.5,
    hart_steps: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> Comparison:
    """Measure each named model on the device the pipelines are on (they must share it).

    ``hart`` serves "hart" and "var" (the same weights without the residual head); ``diffusion``
    serves "diffusion" and "diffusion@N". ``hart_steps``: the residual head's steps (default 8).
    """
    parsed = parse_model_names(models)
    kinds = {kind for _, kind, _ in parsed}
    if kinds & {"hart", "var"} and not isinstance(hart, HartPipeline):
        raise ValueError("hart: a HartPipeline is needed to measure 'hart' or 'var'")
    if "diffusion" in kinds and not isinstance(diffusion, LatentDiffusionPipeline):
        raise ValueError("diffusion: a LatentDiffusionPipeline is needed to measure 'diffusion'")
    devices = {str(p.device) for p in (hart, diffusion) if p is not None}
    if len(devices) > 1:
        raise ValueError(f"hart and diffusion must be on the same device, got {sorted(devices)}")
    rows = []
    for name, kind, steps in parsed:
        pipeline: HartPipeline | VarOnlyPipeline | LatentDiffusionPipeline
        if kind == "diffusion":
            pipeline = diffusion
        elif kind == "var":
            pipeline, steps = var_only(hart), None
        else:
            pipeline, steps = hart, hart_steps
        logger.info("measuring %s", name)
        rows.append(
            measure_model(
                name,
                kind,
                pipeline,
                num_inference_steps=steps,
                throughput_batch_size=throughput_batch_size,
                guidance_scale=guidance_scale,
                warmup=warmup,
                repeats=repeats,
                seed=seed,
            )
        )
    reference = hart if hart is not None else diffusion
    return Comparison(
        device=str(reference.device),
        dtype=str(reference.dtype).removeprefix("torch."),
        guidance_scale=guidance_scale,
        repeats=repeats,
        models=rows,
    )


def load_comparison_models(
    model: str,
    diffusion_model: str | None = None,
    models: str | list[str] = "hart,var,diffusion",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    random_weights: bool = False,
) -> tuple[HartPipeline | None, LatentDiffusionPipeline | None]:
    """The pipelines ``compare_pipelines`` needs: ``model`` (any name :func:`openhart.load` takes)
    and ``diffusion_model`` (a LatentDiffusionPipeline folder). With ``random_weights``, ``model``
    is a preset's architecture and the default diffusion model the baseline sized for it, sharing
    HART's text encoder and tokenizer (speed does not depend on the weights)."""
    from openhart.loading import load

    kinds = {kind for _, kind, _ in parse_model_names(models)}
    hart = load(model, device=device, dtype=dtype, kind="hart", random_weights=random_weights, seed=seed)
    diffusion = None
    if "diffusion" in kinds:
        if diffusion_model is not None:
            diffusion = load(diffusion_model, device=device, dtype=dtype, kind="diffusion")
        elif random_weights:
            diffusion = build_diffusion_baseline(model, seed=seed, hart=hart)
        else:
            raise ValueError(
                "diffusion_model: measuring 'diffusion' next to trained weights needs the baseline's folder "
                "(or pass random_weights for random weights of matched size)"
            )
    return hart, diffusion
