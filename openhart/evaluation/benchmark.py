"""Per-stage latency and peak memory of a HartPipeline on one device.

A stage's time runs from the end of the previous stage to its own end, with the device
synchronised at every boundary, so the stages add up to the whole call. ``scale_k`` covers the
transformer pass of scale k, the token sampling and the next scale's input.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from openhart.pipeline import HartPipeline


@dataclass
class BenchmarkResult:
    preset: str
    device: str
    dtype: str
    batch_size: int
    num_inference_steps: int
    guidance_scale: float
    repeats: int
    stage_seconds: dict[str, float] = field(default_factory=dict)  # median over repeats
    total_seconds: float = 0.0  # median of whole calls
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""  # "cuda max allocated" or "process peak RSS"

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: stage, seconds, share of the total."""
        lines = [
            f"preset {self.preset} | device {self.device} | dtype {self.dtype} | batch {self.batch_size} | "
            f"steps {self.num_inference_steps} | guidance {self.guidance_scale} | median of {self.repeats}",
            f"{'stage':<22}{'seconds':>12}{'share':>9}",
        ]
        total = sum(self.stage_seconds.values()) or 1.0
        for name, seconds in self.stage_seconds.items():
            lines.append(f"{name:<22}{seconds:>12.4f}{100 * seconds / total:>8.1f}%")
        scales = sum(s for n, s in self.stage_seconds.items() if n.startswith("scale_"))
        lines.append(f"{'all scales':<22}{scales:>12.4f}{100 * scales / total:>8.1f}%")
        lines.append(f"{'total':<22}{self.total_seconds:>12.4f}")
        lines.append(f"{'images/s':<22}{self.batch_size / self.total_seconds:>12.3f}")
        lines.append(f"peak memory ({self.peak_memory_kind}): {self.peak_memory_bytes / 2**30:.2f} GiB")
        return "\n".join(lines)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def benchmark_pipeline(
    pipeline: HartPipeline,
    *,
    preset: str = "",
    batch_size: int = 1,
    num_inference_steps: int | None = None,
    guidance_scale: float = 4.5,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    use_cuda_graphs: bool | None = None,
) -> BenchmarkResult:
    """Time ``repeats`` calls (after ``warmup`` untimed ones) of ``pipeline`` on ``batch_size`` prompts."""
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be ≥ 1, warmup ≥ 0")
    device = pipeline.device
    prompts = [f"benchmark prompt number {i}: a photo of a red fox in the snow" for i in range(batch_size)]
    steps = num_inference_steps or pipeline.diffusion_head.config.num_inference_steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_stage: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    for run in range(warmup + repeats):
        stamps: list[tuple[str, float]] = []

        def record(stage: str, stamps: list[tuple[str, float]] = stamps) -> None:
            synchronize(device)
            stamps.append((stage, time.perf_counter()))

        generator = torch.Generator().manual_seed(seed + run)
        synchronize(device)
        start = time.perf_counter()
        pipeline(
            prompts,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=generator,
            output_type="pt",
            stage_callback=record,
            use_cuda_graphs=use_cuda_graphs,
        )
        synchronize(device)
        if run < warmup:
            continue
        totals.append(time.perf_counter() - start)
        previous = start
        for stage, stamp in stamps:
            per_stage[stage].append(stamp - previous)
            previous = stamp
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda max allocated"
    else:
        peak, kind = _peak_rss_bytes(), "process peak RSS"
    return BenchmarkResult(
        preset=preset,
        device=str(device),
        dtype=str(pipeline.dtype).removeprefix("torch."),
        batch_size=batch_size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        repeats=repeats,
        stage_seconds={name: statistics.median(values) for name, values in per_stage.items()},
        total_seconds=statistics.median(totals),
        peak_memory_bytes=int(peak),
        peak_memory_kind=kind,
    )
