"""Per-stage latency and peak memory of a HartPipeline on one device.

A stage's time runs from the end of the previous stage to its own end, with the device
synchronised at every boundary, so the stages add up to the whole call. ``scale_k`` covers the
transformer pass of scale k, the token sampling and the next scale's input. Those boundaries stop
the host from running ahead of the GPU, so the end-to-end latency is measured apart, on calls
without them (``end_to_end_seconds``): that is the number to compare.

:data:`OFFICIAL_REFERENCE` holds the official HART's numbers at the released sizes (measured
with its own code, random weights, its compiled RMSNorm kernel, fp16 autocast, CFG 4.5, text
encoder excluded); results of the same preset, batch size and device type report the ratio.
"""

from __future__ import annotations

import datetime
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from openhart.models.hart import HartPipeline


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
    end_to_end_seconds: float | None = None  # median of calls without stage synchronisation
    options: dict[str, object] = field(default_factory=dict)  # e.g. cuda_graphs, compiled

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def latency_seconds(self) -> float:
        return self.end_to_end_seconds if self.end_to_end_seconds is not None else self.total_seconds

    def official_reference(self) -> OfficialReference | None:
        device_type = self.device.split(":")[0]
        if device_type == "cpu":
            return OFFICIAL_CPU_REFERENCE.get((self.preset, self.dtype)) if self.batch_size == 1 else None
        return OFFICIAL_REFERENCE.get((self.preset, device_type, self.batch_size))

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
        lines.append(f"{'total (stages synced)':<22}{self.total_seconds:>12.4f}")
        if self.end_to_end_seconds is not None:
            lines.append(f"{'end to end':<22}{self.end_to_end_seconds:>12.4f}")
        lines.append(f"{'images/s':<22}{self.batch_size / self.latency_seconds:>12.3f}")
        lines.append(f"peak memory ({self.peak_memory_kind}): {self.peak_memory_bytes / 2**30:.2f} GiB")
        reference = self.official_reference()
        if reference is not None:
            lines.append(
                f"official HART ({reference.where}): {reference.seconds:.3f} s per call, "
                f"{self.batch_size / reference.seconds:.2f} images/s -> this run is "
                f"{reference.seconds / self.latency_seconds:.2f}x as fast"
                + (
                    " (not the same images: unguided_last_scales)"
                    if self.options.get("unguided_last_scales")
                    else ""
                )
                + (
                    f"; official peak memory {reference.peak_memory_gib} GiB"
                    if reference.peak_memory_gib
                    else ""
                )
            )
        if self.options:
            lines.append("options: " + ", ".join(f"{k}={v}" for k, v in self.options.items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class OfficialReference:
    seconds: float  # one call of this batch size
    where: str
    peak_memory_gib: float | None = None


# (preset, device type, batch size) -> the official HART code's time per call (see the module docstring).
OFFICIAL_REFERENCE: dict[tuple[str, str, int], OfficialReference] = {
    ("hart-0.7b-1024", "cuda", 1): OfficialReference(0.498, "H200, 2026-11-26", 5.1),
    ("hart-0.7b-1024", "cuda", 8): OfficialReference(8 / 4.40, "H200, 2026-11-26"),
    ("hart-0.7b-512", "cuda", 1): OfficialReference(0.210, "H200, 2026-11-26"),
    ("hart-0.7b-512", "cuda", 8): OfficialReference(8 / 17.2, "H200, 2026-11-26"),
}
# On CPUs per dtype: the official code patched only to run there (its CUDA calls made no-ops, a PyTorch RMSNorm),
# the hart-0.7b-512 architecture, random weights, medians of alternating runs (docs/performance.md).
OFFICIAL_CPU_REFERENCE: dict[tuple[str, str], OfficialReference] = {
    ("hart-0.7b-512", "float32"): OfficialReference(42.4, "2-core CPU, fp32, 2026-11-29"),
    ("hart-0.7b-512", "bfloat16"): OfficialReference(16.4, "2-core CPU, bf16 torch.autocast, 2026-11-29"),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed call, ``device`` synchronised around each."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _is_compiled(pipeline: HartPipeline) -> bool:
    """Whether ``pipe.compile()`` compiled any part (which parts depends on the device)."""
    modules = (getattr(pipeline.tokenizer, "decoder", None), getattr(pipeline, "diffusion_head", None))
    if any(getattr(module, "_compiled_call_impl", None) is not None for module in modules):
        return True
    return any(
        getattr(block, "compiled_pieces", False) for block in getattr(pipeline.transformer, "blocks", ())
    )


def environment_record() -> dict[str, object]:
    """When and where a measurement ran: UTC date, machine, processor, torch, CPU threads and ISA.

    Benchmarks store it beside their numbers, so a result file says which machine it describes.
    """
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }


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
    end_to_end: bool = True,
    unguided_last_scales: int = 0,
) -> BenchmarkResult:
    """Time ``repeats`` calls (after ``warmup`` untimed ones) of ``pipeline`` on ``batch_size`` prompts.

    With ``end_to_end`` another ``repeats`` calls run without stage callbacks for the latency.
    ``unguided_last_scales`` is the pipeline's speed/quality knob (it changes the images).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be ≥ 1, warmup ≥ 0")
    device = pipeline.device
    prompts = [f"benchmark prompt number {i}: a photo of a red fox in the snow" for i in range(batch_size)]
    steps = num_inference_steps or pipeline.diffusion_head.config.num_inference_steps
    # Passed only when set: the pipelines compared with HART (the diffusion baseline) lack the knob.
    knob = {"unguided_last_scales": unguided_last_scales} if unguided_last_scales else {}
    per_stage: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []

    def timed_call(seed_offset: int, stage_callback: Callable[[str], None] | None) -> tuple[float, float]:
        """(start, seconds) of one synchronised call with seed ``seed + seed_offset``."""
        synchronize(device)
        start = time.perf_counter()
        pipeline(
            prompts,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed + seed_offset),
            output_type="pt",
            stage_callback=stage_callback,
            use_cuda_graphs=use_cuda_graphs,
            **knob,
        )
        synchronize(device)
        return start, time.perf_counter() - start

    for run in range(warmup + repeats):
        if run == warmup and device.type == "cuda":
            # The peak of the timed calls: the warm-up calls also compile and capture graphs.
            torch.cuda.reset_peak_memory_stats(device)
        stamps: list[tuple[str, float]] = []

        def record(stage: str, stamps: list[tuple[str, float]] = stamps) -> None:
            synchronize(device)
            stamps.append((stage, time.perf_counter()))

        start, seconds = timed_call(run, record)
        if run < warmup:
            continue
        totals.append(seconds)
        previous = start
        for stage, stamp in stamps:
            per_stage[stage].append(stamp - previous)
            previous = stamp
    end_to_end_seconds = None
    if end_to_end:
        calls = [timed_call(warmup + repeats + run, None)[1] for run in range(repeats)]
        end_to_end_seconds = statistics.median(calls)
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda max allocated, timed calls"
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
        end_to_end_seconds=end_to_end_seconds,
        options={
            "cuda_graphs": use_cuda_graphs if use_cuda_graphs is not None else device.type == "cuda",
            "compiled": _is_compiled(pipeline),
            "unguided_last_scales": unguided_last_scales,
            # Same images either way; more memory, less time at large batches (transformer/cache.py).
            "store_last_scale_keys": getattr(pipeline.transformer, "store_last_scale_keys", False),
        },
    )
