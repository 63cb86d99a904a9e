"""One prepared GPU run: correctness of the fast paths on CUDA, then timings of the released sizes.

    PYTHONPATH=. python benchmarks/gpu_check.py --out results/ [--golden DIR] [--compare] [--sections a,b]
        [--benchmark-rows N] [--plan preset:batch:variant,...]

Sections, in this order (each reports its numbers; a failing section is reported and the run goes on):
1. ``correctness`` (tiny model): KV-cached vs teacher-forced logits; the same CPU generators give
   the same images on CPU and CUDA; the fast path (CUDA graphs for the prompt pass, every scale and
   the residual loop) vs the eager reference path, on two calls and with ``unguided_last_scales``;
2. ``golden`` with ``--golden DIR`` (a folder like shared/compat/hart-tiny): the golden verifier
   on CUDA in float32 (TF32 off);
3. ``release_compiled_blocks``: hart-0.7b-1024 logits of every scale, eager blocks vs the
   compiled block pieces (``HartTransformer.compile_blocks``), same inputs;
4. ``benchmarks``: ``benchmark_pipeline`` tables (per stage, synchronised at every stage) and
   end-to-end latency without per-stage synchronisation, for the reference, fast (CUDA graphs),
   compiled without and with the blocks (``pipe.compile(transformer=False)``, ``pipe.compile()``)
   paths, the ``unguided_last_scales`` knob and stored last-scale keys, 1024 and 512 px, batch 1
   and 8; per-stage memory of the 1024 px batch-1 call; batch-1 images vs the reference path's;
5. ``output_copy``: a batch of eight 1024 px images to the host, pageable vs page-locked, and
   PIL's quantisation on the host vs on the device;
6. ``text_encoder``: a Qwen2-1.5B-shaped encoder (random weights, bf16) on the release's 439
   tokens, batch 1 and 8;
7. ``release_fast_vs_reference``: hart-0.7b-1024 (random weights, bf16): fast and compiled
   images vs the reference path's for the same generator;
8. ``profile``: the top CUDA kernels of one compiled 1024 px batch-1 call (torch.profiler);
9. ``decoder``: the 1024 px decoder alone at batch 1: eager vs torch.compile, contiguous and
   channels-last;
10. ``residual``: the residual head's loop at 1024 px: eager, CUDA graph, compiled, compiled + graph;
11. ``attention``: the last 1024 px scale's attention with a context-padding mask vs without;
12. ``compare`` with ``--compare`` (needs diffusers): ``openhart compare`` for hart, var,
    diffusion@20 and diffusion@50 at the released 1024 px size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.evaluation.benchmark import benchmark_pipeline, median_seconds
from openhart.presets import build_pipeline
from tests.conftest import make_tiny_pipeline

PROMPTS = ["a red fox in the snow", "a blue car"]
STARTED = time.perf_counter()


_RELEASE: dict[str, object] = {}
_OUT: list[str] = ["."]


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
    _uncompile(pipe)
    torch.cuda.empty_cache()
    return pipe


def _uncompile(pipe) -> None:
    """Undo ``pipe.compile()`` (nn.Module.compile keeps the compiled call in one attribute)."""
    for module in (pipe.tokenizer.decoder, pipe.diffusion_head):
        module._compiled_call_impl = None
    pipe.transformer.compile_blocks(False)
    pipe.tokenizer.decoder.output_filter_multiple = 1
    pipe.decoder_memory_format = None
    pipe.tokenizer.decoder.to(memory_format=torch.contiguous_format)
    pipe.tokenizer.decoder.use_channel_sum_statistics(False)
    pipe.transformer.store_last_scale_keys = False


def _images(pipe, use_cuda_graphs=None, seeds=(0, 1), unguided_last_scales=0):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    prompts = [PROMPTS[i % 2] for i in range(len(seeds))]
    return pipe(
        prompts,
        generator=gens,
        output_type="pt",
        use_cuda_graphs=use_cuda_graphs,
        unguided_last_scales=unguided_last_scales,
    ).images


def _reference(pipe, seeds):
    """The reference path: eager everywhere (no CUDA graphs)."""
    return _images(pipe, use_cuda_graphs=False, seeds=seeds)


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
    unguided_fast = _images(gpu, use_cuda_graphs=True, unguided_last_scales=2)
    unguided_reference = _images(gpu, use_cuda_graphs=False, unguided_last_scales=2)
    bf16 = _images(make_tiny_pipeline().to(device, torch.bfloat16))
    # PIL images are quantised on the device now: the same pixels as quantising the "pt" output.
    pil = gpu(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], output_type="pil").images
    quantised = (reference.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu()
    pil_same = all(
        torch.equal(torch.from_numpy(np.asarray(image)), q) for image, q in zip(pil, quantised, strict=True)
    )
    return {
        "kv_vs_teacher_forced_max_abs": (torch.cat(rows, 1) - teacher).abs().max().item(),
        "cpu_vs_cuda_images_max_abs": (_images(cpu) - reference).abs().max().item(),
        "fast_vs_reference_images_max_abs": (fast - reference).abs().max().item(),
        "fast_vs_reference_second_call_max_abs": (fast_again - reference_again).abs().max().item(),
        "unguided_last_scales_2_fast_vs_reference_max_abs": (unguided_fast - unguided_reference)
        .abs()
        .max()
        .item(),
        "prompt_pass_graphed": graphs.prefill_graph is not None,
        "residual_graphs": len(gpu._residual_graphs),
        "bf16_finite": bool(torch.isfinite(bf16).all()),
        "pil_equals_quantised_pt": pil_same,
    }


def golden(folder: Path, device: torch.device) -> dict:
    from openhart.compat.verify import GoldenVerifier

    # float32 means float32: TF32 convolutions (cuDNN's default) alone exceed the 1e-4 tolerance.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    results = GoldenVerifier(folder, 1e-4, device=device, dtype=torch.float32).run()
    report = {
        "passed": sum(r.status == "PASS" for r in results),
        "total": len(results),
        "failed": [r.name for r in results if r.status in ("FAIL", "UNKNOWN")],
    }
    print(f"golden float32: {report}", flush=True)
    return report


def _cached_logits(transformer, context, mask, inputs) -> list[torch.Tensor]:
    cfg = transformer.config
    state, first = transformer.start_generation(context, mask)
    rows, start = [first.float()], 0
    for k in range(1, cfg.num_scales):
        count = cfg.patch_nums[k] ** 2
        logits, _ = transformer.generation_step(state, k, inputs[:, start : start + count])
        rows.append(logits.float())
        start += count
    return rows


def release_compiled_blocks(device: torch.device) -> dict:
    """hart-0.7b-1024 logits of every scale (same inputs): eager blocks vs compiled block pieces."""
    pipe = _release(device)
    transformer, cfg = pipe.transformer, pipe.transformer.config
    g = torch.Generator(device=device).manual_seed(0)
    context = torch.randn(2, cfg.context_tokens, cfg.context_dim, device=device, generator=g)
    mask = torch.ones(2, cfg.context_tokens, dtype=torch.bool, device=device)
    inputs = torch.randn(2, cfg.num_image_tokens - 1, cfg.latent_channels, device=device, generator=g)
    eager = _cached_logits(transformer, context, mask, inputs)
    transformer.compile_blocks()
    started = time.perf_counter()
    compiled = _cached_logits(transformer, context, mask, inputs)
    first_call_s = time.perf_counter() - started
    compiled = _cached_logits(transformer, context, mask, inputs)
    transformer.compile_blocks(False)
    eager_all, compiled_all = torch.cat(eager, 1), torch.cat(compiled, 1)
    return {
        "logits_max_abs": eager_all.abs().max().item(),
        "max_abs_diff": (compiled_all - eager_all).abs().max().item(),
        "mean_abs_diff": (compiled_all - eager_all).abs().mean().item(),
        "per_scale_max_abs_diff": [(c - e).abs().max().item() for c, e in zip(compiled, eager, strict=True)],
        "argmax_agreement": (compiled_all.argmax(-1) == eager_all.argmax(-1)).float().mean().item(),
        "first_compiled_call_s": first_call_s,
    }


def release_fast_vs_reference(device: torch.device) -> dict:
    pipe = _release(device)
    reference = _reference(pipe, (3,))
    fast = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    fast_again = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    graphs = next(iter(pipe._graph_generators.values()))
    pipe.compile(transformer=False)
    compiled_no_blocks = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    pipe.compile()
    compiled = _images(pipe, use_cuda_graphs=True, seeds=(3,))
    return {
        "max_abs": (fast - reference).abs().max().item(),
        "mean_abs": (fast - reference).abs().mean().item(),
        "fast_repeat_max_abs": (fast - fast_again).abs().max().item(),
        "compiled_without_blocks_vs_reference_max_abs": (compiled_no_blocks - reference).abs().max().item(),
        "compiled_without_blocks_vs_reference_mean_abs": (compiled_no_blocks - reference).abs().mean().item(),
        "compiled_vs_reference_max_abs": (compiled - reference).abs().max().item(),
        "compiled_vs_reference_mean_abs": (compiled - reference).abs().mean().item(),
        "prompt_pass_graphed": graphs.prefill_graph is not None,
        "residual_graph_failed": [g.failed for g in pipe._residual_graphs.values()],
    }


@torch.no_grad()
def decoder(device: torch.device) -> dict:
    """The 1024 px decoder alone at batch 1: eager contiguous vs compiled contiguous / channels-last."""
    pipe = _release(device)
    config = pipe.tokenizer.config
    latent = torch.randn(
        1, config.latent_channels, config.latent_size, config.latent_size, device=device, dtype=torch.bfloat16
    )
    module = pipe.tokenizer.decoder
    out = {}
    torch.cuda.reset_peak_memory_stats(device)
    out["eager_contiguous_s"] = median_seconds(lambda: module(latent), device)
    out["eager_contiguous_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    reference = module(latent).float()
    for name, memory_format in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        module.to(memory_format=memory_format)
        x = latent.contiguous(memory_format=memory_format)
        compiled = torch.compile(module)
        started = time.perf_counter()
        compiled(x)
        torch.cuda.synchronize()
        out[f"compiled_{name}_compile_s"] = time.perf_counter() - started
        torch.cuda.reset_peak_memory_stats(device)
        out[f"compiled_{name}_s"] = median_seconds(lambda compiled=compiled, x=x: compiled(x), device)
        out[f"compiled_{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out[f"compiled_{name}_max_abs"] = (compiled(x).float() - reference).abs().max().item()
        print(f"decoder: {out}", flush=True)
    module.to(memory_format=torch.contiguous_format)
    return out


@torch.no_grad()
def residual(device: torch.device) -> dict:
    """The residual head's 8-step loop at 1024 px batch 1 with CFG: eager, graph, compiled, both."""
    from openhart.diffusion.graphs import CUDAGraphResidualSampler

    pipe = _release(device)
    head = pipe.diffusion_head
    rows = pipe.transformer.config.patch_nums[-1] ** 2
    width = head.config.condition_dim
    condition = torch.randn(rows, width, device=device, dtype=torch.bfloat16)
    uncond = torch.randn(rows, width, device=device, dtype=torch.bfloat16)

    def eager():
        return head.sample(
            condition, uncond_condition=uncond, guidance_scale=4.5, generator=torch.Generator().manual_seed(0)
        )

    def graphed_sampler():
        return CUDAGraphResidualSampler(
            head,
            rows,
            torch.bfloat16,
            device,
            guidance_scale=4.5,
            num_inference_steps=None,
            temperature=1.0,
            use_uncond=True,
        )

    out = {"rows": rows}
    reference = eager()
    out["eager_s"] = median_seconds(eager, device)
    sampler = graphed_sampler()
    graphed = lambda: sampler.sample(condition, uncond, torch.Generator().manual_seed(0))  # noqa: E731
    out["graph_vs_eager_max_abs"] = (graphed() - reference).abs().max().item()
    out["graph_s"] = median_seconds(graphed, device)
    head.compile()
    started = time.perf_counter()
    compiled = eager()
    out["compile_s"] = time.perf_counter() - started
    out["compiled_vs_eager_max_abs"] = (compiled - reference).abs().max().item()
    out["compiled_s"] = median_seconds(eager, device)
    sampler = graphed_sampler()
    graphed = lambda: sampler.sample(condition, uncond, torch.Generator().manual_seed(0))  # noqa: E731
    out["compiled_graph_vs_eager_max_abs"] = (graphed() - reference).abs().max().item()
    out["compiled_graph_failed"] = sampler.failed
    out["compiled_graph_s"] = median_seconds(graphed, device)
    head._compiled_call_impl = None
    print(f"residual: {out}", flush=True)
    return out


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
    with_mask = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), device)
    without = median_seconds(lambda: F.scaled_dot_product_attention(q, k, v), device)
    return {
        "queries": queries,
        "keys": keys,
        "mask_context_padding": cfg.mask_context_padding,
        "per_layer_with_mask_s": with_mask,
        "per_layer_without_mask_s": without,
        "depth": cfg.depth,
    }


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


def benchmarks(device: torch.device, rows: int | None = None, custom_plan: str | None = None) -> list[dict]:
    out = []
    # Most wanted first (a run cut short by its time limit keeps what it measured): variant names are
    # "reference" (eager), "fast" (CUDA graphs), "compiled-blocks-off" (pipe.compile(transformer=False)),
    # "compiled" (pipe.compile()); "+uN" adds unguided_last_scales=N, "+store" stores the last
    # scale's keys (HartTransformer.store_last_scale_keys). The fast path's batch-1 row comes first
    # so its memory is measured with nothing left over from other sections.
    default_plan = (
        ("hart-0.7b-1024", 1, "fast"),
        ("hart-0.7b-1024", 1, "reference"),
        ("hart-0.7b-1024", 1, "compiled"),
        ("hart-0.7b-1024", 8, "compiled"),
        ("hart-0.7b-1024", 8, "compiled+store"),
        ("hart-0.7b-512", 1, "compiled"),
        ("hart-0.7b-512", 8, "compiled"),
        ("hart-0.7b-1024", 8, "fast"),
        ("hart-0.7b-1024", 8, "compiled+u1"),
        ("hart-0.7b-1024", 1, "compiled-blocks-off"),
        ("hart-0.7b-512", 1, "fast"),
    )
    images: dict[str, torch.Tensor] = {}  # 1024 px batch-1 image of seed 3, per variant
    print(
        f"allocated before the benchmarks: {torch.cuda.memory_allocated(device) / 2**30:.3f} GiB", flush=True
    )
    plan = default_plan
    if custom_plan is not None:  # "preset:batch:variant,..." replaces the default plan
        plan = tuple((p, int(b), v) for p, b, v in (row.split(":") for row in custom_plan.split(",")))
    for preset, batch, variant in plan[:rows]:
        pipe = _release(device, preset)
        base, _, knob = variant.removesuffix("+store").partition("+u")
        if base == "compiled":
            pipe.compile()
        elif base == "compiled-blocks-off":
            pipe.compile(transformer=False)
        pipe.transformer.store_last_scale_keys = variant.endswith("+store")
        graphs = base != "reference"
        result = benchmark_pipeline(
            pipe,
            preset=preset,
            batch_size=batch,
            warmup=1,
            repeats=3,
            use_cuda_graphs=graphs,
            unguided_last_scales=int(knob or 0),
        )
        row = {**result.to_dict(), "variant": variant}
        row["end_to_end_s"] = result.end_to_end_seconds
        row["images_per_s"] = batch / result.end_to_end_seconds
        if preset == "hart-0.7b-1024" and batch == 1 and variant in ("fast", "compiled"):
            row["stage_memory"] = _stage_memory(pipe, device)
        if preset == "hart-0.7b-1024" and batch == 1 and not knob:
            images[variant] = _images(pipe, use_cuda_graphs=graphs, seeds=(3,))
            row["image_seed_3"] = variant
        print(f"--- {variant}: end to end {row['end_to_end_s']:.4f} s\n{result.table()}", flush=True)
        out.append(row)
        for earlier in out:  # every batch-1 image vs the reference path's, once both exist
            if earlier.get("image_seed_3") not in (None, "reference") and "reference" in images:
                difference = (images[earlier["image_seed_3"]] - images["reference"]).abs()
                earlier["images_vs_reference_max_abs"] = difference.max().item()
                earlier["images_vs_reference_mean_abs"] = difference.mean().item()
        (Path(_OUT[0]) / "benchmarks_partial.json").write_text(json.dumps(out, indent=2))
    return out


@torch.no_grad()
def output_copy(device: torch.device) -> dict:
    """Handing a batch of eight 1024 px images to the host: pageable vs page-locked copy, and
    PIL's quantisation on the host (before) vs on the device (now), same pixels."""
    from openhart.models.pipeline_io import to_host

    images = torch.rand(8, 3, 1024, 1024, device=device)
    out = {
        "pageable_float_s": median_seconds(lambda: images.cpu(), device),
        "page_locked_float_s": median_seconds(lambda: to_host(images), device),
    }

    def quantised_on_host():
        return [(image * 255).round().astype(np.uint8) for image in images.permute(0, 2, 3, 1).cpu().numpy()]

    def quantised_on_device():
        return to_host((images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).contiguous()).numpy()

    out["pil_quantised_on_host_s"] = median_seconds(quantised_on_host, device)
    out["pil_quantised_on_device_s"] = median_seconds(quantised_on_device, device)
    out["same_pixels"] = bool(np.array_equal(np.stack(quantised_on_host()), quantised_on_device()))
    print(f"output copy: {out}", flush=True)
    return out


@torch.no_grad()
def text_encoder(device: torch.device) -> dict:
    """The released text encoder's cost: a Qwen2-1.5B-shaped model (random weights, bf16) on the
    release's 139 system-prompt tokens + 300 prompt tokens, through ``last_hidden_states``.

    Tokenising is left out (a fast tokenizer on the CPU, well under a millisecond per prompt).
    """
    from transformers import Qwen2Config, Qwen2Model

    from openhart.text.encoders import last_hidden_states

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen2Model(config).to(torch.bfloat16).eval()
    out = {"parameters": sum(p.numel() for p in model.parameters()), "tokens": 139 + 300}
    system = torch.randint(0, config.vocab_size, (139,))
    for batch in (1, 8):
        ids = torch.randint(0, config.vocab_size, (batch, 300), device=device)
        mask = torch.zeros(batch, 300, dtype=torch.bool, device=device)
        mask[:, :16] = True
        out[f"batch_{batch}_s"] = median_seconds(
            lambda ids=ids, mask=mask: last_hidden_states(model, ids, mask, system), device
        )
    print(f"text encoder: {out}", flush=True)
    return out


def profile(device: torch.device, out_dir: Path) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    pipe = _release(device).compile()
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
    """``openhart compare`` at 1024 px: default (CUDA graphs) HART, then compiled HART."""
    from openhart.evaluation.compare import compare_pipelines
    from openhart.presets import build_diffusion_baseline

    hart = _release(device)
    diffusion = build_diffusion_baseline("hart-0.7b-1024", seed=0, hart=hart)
    out = {}
    for variant in ("default", "compiled"):
        if variant == "compiled":
            hart.compile()
        result = compare_pipelines(
            hart,
            diffusion,
            "hart,var,diffusion@20,diffusion@50",
            throughput_batch_size=8,
            warmup=1,
            repeats=2,
        )
        print(f"--- HART {variant}\n{result.table()}", flush=True)
        out[variant] = result.to_dict()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--golden", type=Path, default=None)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--sections", default=None, help="run only these sections (comma list)")
    parser.add_argument("--benchmark-rows", type=int, default=None, help="only the first N rows of the plan")
    parser.add_argument(
        "--plan", default=None, help="benchmark rows instead of the default plan: preset:batch:variant,..."
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    _OUT[0] = str(args.out)
    device = torch.device("cuda")
    report = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__}
    sections = [
        ("correctness", lambda: correctness(device)),
        ("release_compiled_blocks", lambda: release_compiled_blocks(device)),
        ("benchmarks", lambda: benchmarks(device, args.benchmark_rows, args.plan)),
        ("output_copy", lambda: output_copy(device)),
        ("text_encoder", lambda: text_encoder(device)),
        ("release_fast_vs_reference", lambda: release_fast_vs_reference(device)),
        ("profile", lambda: profile(device, args.out)),
        ("decoder", lambda: decoder(device)),
        ("residual", lambda: residual(device)),
        ("attention", lambda: attention(device)),
    ]
    if args.golden is not None:
        sections.insert(1, ("golden", lambda: golden(args.golden, device)))
    if args.compare:
        sections.append(("compare", lambda: compare(device)))
    if args.sections is not None:
        wanted = set(args.sections.split(","))
        sections = [(name, run) for name, run in sections if name in wanted]
    for name, run in sections:
        started = time.perf_counter()
        try:
            report[name] = run()
            if name in (
                "correctness",
                "golden",
                "release_compiled_blocks",
                "release_fast_vs_reference",
                "attention",
            ):
                print(json.dumps(report[name], indent=2), flush=True)
        except Exception:  # a benchmark script reports a broken section and goes on to the next
            report[name] = {"error": traceback.format_exc()}
            print(f"section {name} failed:\n{report[name]['error']}", flush=True)
        torch.cuda.empty_cache()
        print(f"[{_elapsed():.0f} s] section {name} took {time.perf_counter() - started:.1f} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
