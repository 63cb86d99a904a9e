"""One prepared GPU run: correctness of the fast paths on CUDA, then timings of the released sizes.

    PYTHONPATH=. python benchmarks/gpu_check.py --out results/ [--golden DIR] [--compare]

Sections (each reports its numbers; a failing section is reported and the run goes on):
1. ``correctness`` (tiny model): KV-cached vs teacher-forced logits; the same CPU generators give
   the same images on CPU and CUDA; the fast path (CUDA graphs for the prompt pass, every scale and
   the residual loop, channels-last decoder) vs the eager reference path, on two calls;
2. ``golden`` with ``--golden DIR`` (a folder like shared/compat/hart-tiny): the golden verifier
   on CUDA in float32;
3. ``release_fast_vs_reference``: hart-0.7b-1024 (random weights, bf16), fast path vs reference
   path images for the same generator;
4. ``decoder``: the 1024 px decoder alone, batch 1 and 8: contiguous vs channels-last, with
   and without cudnn.benchmark (and, last, torch.compile of the channels-last one when time
   allows: ``decoder_compiled``);
5. ``attention``: the last 1024 px scale's attention (8192 queries over the whole cache) with the
   context-padding mask vs without it (the flash kernel);
6. ``benchmarks``: ``benchmark_pipeline`` tables (per stage, synchronised at every stage) and
   end-to-end latency without per-stage synchronisation, reference vs fast, 1024 and 512 px,
   batch 1 and 8; per-stage memory of the fast 1024 px batch-1 call;
7. ``profile``: the top CUDA kernels of one fast 1024 px batch-1 call (torch.profiler);
8. ``compare`` with ``--compare`` (needs diffusers): ``openhart compare`` for hart, var,
   diffusion@20 and diffusion@50 at the released 1024 px size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.evaluation.benchmark import benchmark_pipeline
from openhart.presets import build_pipeline
from tests.conftest import make_tiny_pipeline

PROMPTS = ["a red fox in the snow", "a blue car"]
STARTED = time.perf_counter()


_RELEASE: dict[str, object] = {}


def _elapsed() -> float:
    return time.perf_counter() - STARTED


def _release(device: torch.device, preset: str = "hart-0.7b-1024"):
    """One random-weight bf16 pipeline per preset, shared by the sections (building one takes seconds)."""
    if preset not in _RELEASE:
        _RELEASE.clear()
        torch.cuda.empty_cache()
        _RELEASE[preset] = build_pipeline(preset, seed=0, device=device, dtype=torch.bfloat16)
    pipe = _RELEASE[preset]
    pipe._graph_generators.clear()  # each section measures memory with only its own graphs
    pipe._residual_graphs.clear()
    pipe.decoder_memory_format = None
    pipe.tokenizer.decoder.to(memory_format=torch.contiguous_format)
    torch.cuda.empty_cache()
    return pipe


def _images(pipe, use_cuda_graphs=None, seeds=(0, 1)):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    prompts = [PROMPTS[i % 2] for i in range(len(seeds))]
    return pipe(prompts, generator=gens, output_type="pt", use_cuda_graphs=use_cuda_graphs).images


def _reference(pipe, seeds):
    """The reference path: eager everywhere, contiguous decoder."""
    pipe.decoder_memory_format = torch.contiguous_format
    try:
        return _images(pipe, use_cuda_graphs=False, seeds=seeds)
    finally:
        pipe.decoder_memory_format = None


def correctness(device: torch.device) -> dict:
    cpu = make_tiny_pipeline()
    gpu = make_tiny_pipeline().to(device)
    context, mask = gpu.encode_prompt(PROMPTS)
    inputs = torch.randn(2, gpu.transformer.config.num_image_tokens - 1, 8, device=device)
    with torch.no_grad():
        teacher = gpu.transformer(context, mask, inputs).logits
    state, first = gpu.transformer.start_generation(context, mask)
    rows, start = [first], 0
    for k in range(1, gpu.transformer.config.num_scales):
        n = gpu.transformer.config.patch_nums[k] ** 2
        logits, _ = gpu.transformer.generation_step(state, k, inputs[:, start : start + n])
        rows.append(logits)
        start += n
    reference = _reference(gpu, (0, 1))
    fast = _images(gpu, use_cuda_graphs=True)
    fast_again = _images(gpu, use_cuda_graphs=True, seeds=(5, 6))
    reference_again = _reference(gpu, (5, 6))
    graphs = next(iter(gpu._graph_generators.values()))
    bf16 = _images(make_tiny_pipeline().to(device, torch.bfloat16))
    return {
        "kv_vs_teacher_forced_max_abs": (torch.cat(rows, 1) - teacher).abs().max().item(),
        "cpu_vs_cuda_images_max_abs": (_images(cpu) - reference).abs().max().item(),
        "fast_vs_reference_images_max_abs": (fast - reference).abs().max().item(),
        "fast_vs_reference_second_call_max_abs": (fast_again - reference_again).abs().max().item(),
        "prompt_pass_graphed": graphs.prefill_graph is not None,
        "residual_graphs": len(gpu._residual_graphs),
        "bf16_finite": bool(torch.isfinite(bf16).all()),
    }


def golden(folder: Path, device: torch.device) -> dict:
    from openhart.compat.verify import GoldenVerifier

    results = GoldenVerifier(folder, 1e-4, device=device, dtype=torch.float32).run()
    report = {
        "passed": sum(r.status == "PASS" for r in results),
        "total": len(results),
        "failed": [r.name for r in results if r.status in ("FAIL", "UNKNOWN")],
    }
    print(f"golden float32: {report}", flush=True)
    return report


def release_fast_vs_reference(device: torch.device) -> dict:
    pipe = _release(device)
    reference = _reference(pipe, (3,))
    fast = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    fast_again = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    graphs = next(iter(pipe._graph_generators.values()))
    return {
        "max_abs": (fast - reference).abs().max().item(),
        "mean_abs": (fast - reference).abs().mean().item(),
        "fast_repeat_max_abs": (fast - fast_again).abs().max().item(),
        "prompt_pass_graphed": graphs.prefill_graph is not None,
    }


def _time(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def decoder(device: torch.device) -> dict:
    pipe = _release(device)
    config = pipe.tokenizer.config
    out = {}
    for batch, cudnn_benchmark in ((1, False), (1, True), (8, False)):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        latent = torch.randn(
            batch,
            config.latent_channels,
            config.latent_size,
            config.latent_size,
            device=device,
            dtype=torch.bfloat16,
        )
        pipe.decoder_memory_format = torch.contiguous_format
        pipe.tokenizer.decoder.to(memory_format=torch.contiguous_format)
        torch.cuda.reset_peak_memory_stats(device)
        contiguous = _time(lambda latent=latent: pipe.decode_latent(latent))
        contiguous_peak = torch.cuda.max_memory_allocated(device)
        reference = pipe.decode_latent(latent)
        pipe.decoder_memory_format = torch.channels_last
        torch.cuda.reset_peak_memory_stats(device)
        channels_last = _time(lambda latent=latent: pipe.decode_latent(latent))
        channels_last_peak = torch.cuda.max_memory_allocated(device)
        difference = (pipe.decode_latent(latent).float() - reference.float()).abs().max().item()
        out[f"batch_{batch}_cudnn_benchmark_{cudnn_benchmark}"] = {
            "contiguous_s": contiguous,
            "channels_last_s": channels_last,
            "contiguous_peak_gib": contiguous_peak / 2**30,
            "channels_last_peak_gib": channels_last_peak / 2**30,
            "max_abs_difference": difference,
        }
        print(
            f"decoder batch {batch} cudnn.benchmark {cudnn_benchmark}: {out[f'batch_{batch}_cudnn_benchmark_{cudnn_benchmark}']}",
            flush=True,
        )
    torch.backends.cudnn.benchmark = False
    pipe.tokenizer.decoder.to(memory_format=torch.contiguous_format)
    return out


@torch.no_grad()
def decoder_compiled(device: torch.device) -> dict:
    """torch.compile of the channels-last decoder at batch 1 (run last: compiling takes a while)."""
    if _elapsed() > 270:
        return {"skipped": f"out of time ({_elapsed():.0f} s elapsed)"}
    pipe = _release(device)
    config = pipe.tokenizer.config
    latent = torch.randn(
        1, config.latent_channels, config.latent_size, config.latent_size, device=device, dtype=torch.bfloat16
    ).contiguous(memory_format=torch.channels_last)
    decoder = pipe.tokenizer.decoder.to(memory_format=torch.channels_last)
    eager = _time(lambda: decoder(latent))
    compiled = torch.compile(decoder)
    started = time.perf_counter()
    compiled(latent)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - started
    return {
        "eager_channels_last_s": eager,
        "compiled_channels_last_s": _time(lambda: compiled(latent)),
        "compile_s": compile_s,
        "max_abs_difference": (compiled(latent).float() - decoder(latent).float()).abs().max().item(),
    }


@torch.no_grad()
def attention(device: torch.device) -> dict:
    pipe = _release(device)
    cfg = pipe.transformer.config
    keys = cfg.context_tokens + cfg.num_image_tokens - 1
    queries = cfg.patch_nums[-1] ** 2
    q = torch.randn(2, cfg.num_heads, queries, cfg.head_dim, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, cfg.num_heads, keys, cfg.head_dim, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.ones(2, 1, 1, keys, device=device, dtype=torch.bool)
    mask[1, ..., 5 : cfg.context_tokens] = False  # an unconditional row: padding after the first tokens
    with_mask = _time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    without = _time(lambda: F.scaled_dot_product_attention(q, k, v))
    return {
        "queries": queries,
        "keys": keys,
        "mask_context_padding": cfg.mask_context_padding,
        "per_layer_with_mask_s": with_mask,
        "per_layer_without_mask_s": without,
        "depth": cfg.depth,
    }


def _end_to_end(pipe, batch: int, graphs: bool, repeats: int = 5) -> float:
    prompts = [f"benchmark prompt number {i}: a photo of a red fox in the snow" for i in range(batch)]

    def call(seed: int) -> None:
        pipe(
            prompts,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
            use_cuda_graphs=graphs,
        )

    call(0)
    torch.cuda.synchronize()
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        call(seed)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _stage_memory(pipe, device: torch.device) -> dict:
    """Peak allocated memory inside each stage of one fast batch-1 call (after a warm call)."""
    memory = {}

    def record(stage: str) -> None:
        torch.cuda.synchronize()
        memory[stage] = {
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "after_gib": torch.cuda.memory_allocated(device) / 2**30,
        }
        torch.cuda.reset_peak_memory_stats(device)

    torch.cuda.reset_peak_memory_stats(device)
    pipe(["a red fox"], generator=torch.Generator().manual_seed(0), output_type="pt", stage_callback=record)
    return memory


def benchmarks(device: torch.device) -> list[dict]:
    out = []
    plan = (
        ("hart-0.7b-1024", 1, False),
        ("hart-0.7b-1024", 1, True),
        ("hart-0.7b-1024", 8, False),
        ("hart-0.7b-1024", 8, True),
        ("hart-0.7b-512", 1, False),
        ("hart-0.7b-512", 1, True),
        ("hart-0.7b-512", 8, True),
    )
    for preset, batch, fast in plan:
        pipe = _release(device, preset)
        pipe.decoder_memory_format = None if fast else torch.contiguous_format
        result = benchmark_pipeline(
            pipe,
            preset=preset,
            batch_size=batch,
            warmup=1,
            repeats=3 if batch == 1 else 2,
            use_cuda_graphs=fast,
        )
        row = {**result.to_dict(), "fast": fast}
        row["end_to_end_s"] = _end_to_end(pipe, batch, fast, repeats=5 if batch == 1 else 3)
        row["images_per_s"] = batch / row["end_to_end_s"]
        if preset == "hart-0.7b-1024" and batch == 1 and fast:
            row["stage_memory"] = _stage_memory(pipe, device)
        print(f"--- fast: {fast}, end to end {row['end_to_end_s']:.4f} s\n{result.table()}", flush=True)
        out.append(row)
    return out


def profile(device: torch.device, out_dir: Path) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    pipe = _release(device)
    for _ in range(2):
        pipe(["a red fox"], generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        pipe(["a red fox"], generator=torch.Generator().manual_seed(0), output_type="pt")
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    (out_dir / "profile_1024_b1.txt").write_text(table)
    print(table, flush=True)
    return {"table": "profile_1024_b1.txt"}


def compare(device: torch.device) -> dict:
    from openhart.evaluation.baselines import build_diffusion_baseline
    from openhart.evaluation.compare import compare_pipelines

    hart = _release(device)
    diffusion = build_diffusion_baseline("hart-0.7b-1024", seed=0, hart=hart)
    result = compare_pipelines(
        hart, diffusion, "hart,var,diffusion@20,diffusion@50", throughput_batch_size=8, warmup=1, repeats=2
    )
    print(result.table(), flush=True)
    return result.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--golden", type=Path, default=None)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    report = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__}
    sections = [
        ("correctness", lambda: correctness(device)),
        ("release_fast_vs_reference", lambda: release_fast_vs_reference(device)),
        ("decoder", lambda: decoder(device)),
        ("attention", lambda: attention(device)),
        ("benchmarks", lambda: benchmarks(device)),
        ("profile", lambda: profile(device, args.out)),
    ]
    if args.golden is not None:
        sections.insert(1, ("golden", lambda: golden(args.golden, device)))
    if args.compare:
        sections.append(("compare", lambda: compare(device)))
    sections.append(("decoder_compiled", lambda: decoder_compiled(device)))
    for name, run in sections:
        started = time.perf_counter()
        try:
            report[name] = run()
            if name in ("correctness", "release_fast_vs_reference", "attention"):
                print(json.dumps(report[name], indent=2), flush=True)
        except Exception:  # a benchmark script reports a broken section and goes on to the next
            report[name] = {"error": traceback.format_exc()}
            print(f"section {name} failed:\n{report[name]['error']}", flush=True)
        torch.cuda.empty_cache()
        print(f"[{_elapsed():.0f} s] section {name} took {time.perf_counter() - started:.1f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
