"""One prepared GPU run: correctness on CUDA, then per-stage timings of the released architecture.

    PYTHONPATH=. python benchmarks/gpu_check.py --out results/ [--golden DIR]

Sections (each reports its numbers; a failing section is reported and the run goes on):
1. correctness with a tiny model: KV-cached vs teacher-forced logits on CUDA (fp32), the same CPU
   generators giving the same images on CPU and CUDA, CUDA graphs vs eager, bf16 finite;
2. with ``--golden DIR`` (a folder like shared/compat/hart-tiny): the golden verifier on CUDA in
   float32, bfloat16 and float16, max error per case;
3. ``openhart bench`` tables for hart-0.7b-1024 (batch 1 eager and with CUDA graphs, batch 8) and
   hart-0.7b-512 (batch 1) in bf16, random weights, CFG 4.5, 8 residual steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.evaluation.benchmark import benchmark_pipeline
from openhart.presets import build_pipeline
from tests.conftest import make_tiny_pipeline

PROMPTS = ["a red fox in the snow", "a blue car"]


def _images(pipe, use_cuda_graphs=None, seeds=(0, 1)):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    prompts = [PROMPTS[i % 2] for i in range(len(seeds))]
    return pipe(prompts, generator=gens, output_type="pt", use_cuda_graphs=use_cuda_graphs).images


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
    eager = _images(gpu, use_cuda_graphs=False)
    graphed = _images(gpu, use_cuda_graphs=True)
    graphed_again = _images(gpu, use_cuda_graphs=True, seeds=(5, 6))
    eager_again = _images(gpu, use_cuda_graphs=False, seeds=(5, 6))
    bf16 = _images(make_tiny_pipeline().to(device, torch.bfloat16))
    return {
        "kv_vs_teacher_forced_max_abs": (torch.cat(rows, 1) - teacher).abs().max().item(),
        "cpu_vs_cuda_images_max_abs": (_images(cpu) - eager).abs().max().item(),
        "graphs_vs_eager_images_max_abs": (graphed - eager).abs().max().item(),
        "graphs_vs_eager_second_call_max_abs": (graphed_again - eager_again).abs().max().item(),
        "bf16_finite": bool(torch.isfinite(bf16).all()),
    }


def golden(folder: Path, device: torch.device) -> dict:
    from openhart.compat.verify import GoldenVerifier

    report = {}
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 1e9), (torch.float16, 1e9)):
        results = GoldenVerifier(folder, tolerance, device=device, dtype=dtype).run()
        name = str(dtype).removeprefix("torch.")
        report[name] = {
            "passed": sum(r.status == "PASS" for r in results),
            "failed": [r.name for r in results if r.status in ("FAIL", "UNKNOWN")],
            "max_error": {r.name: r.error for r in results if r.error is not None},
        }
        print(
            f"golden {name}: {report[name]['passed']} passed, failed {report[name]['failed'][:12]}",
            flush=True,
        )
    return report


def benchmarks(device: torch.device) -> list[dict]:
    out = []
    plan = (
        ("hart-0.7b-1024", 1, 3, False),
        ("hart-0.7b-1024", 1, 3, True),
        ("hart-0.7b-1024", 8, 2, True),
        ("hart-0.7b-512", 1, 3, True),
        ("hart-0.7b-512", 8, 2, True),
    )
    pipelines = {}
    for preset, batch, repeats, graphs in plan:
        if preset not in pipelines:
            pipelines.clear()
            torch.cuda.empty_cache()
            started = time.perf_counter()
            pipelines[preset] = build_pipeline(preset, seed=0, device=device, dtype=torch.bfloat16)
            print(f"built {preset} in {time.perf_counter() - started:.1f} s", flush=True)
        pipe = pipelines[preset]
        result = benchmark_pipeline(
            pipe, preset=preset, batch_size=batch, warmup=1, repeats=repeats, use_cuda_graphs=graphs
        )
        print(f"--- cuda graphs: {graphs}\n{result.table()}", flush=True)
        out.append({**result.to_dict(), "cuda_graphs": graphs})
        if preset == "hart-0.7b-1024" and batch == 1 and graphs:
            a = _images(pipe, use_cuda_graphs=False, seeds=(3,))
            b = _images(pipe, use_cuda_graphs=True, seeds=(3,))
            print(f"release graphs vs eager image max abs: {(a - b).abs().max().item():.3e}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--golden", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    report = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__}
    sections = [("correctness", lambda: correctness(device)), ("benchmarks", lambda: benchmarks(device))]
    if args.golden is not None:
        sections.insert(1, ("golden", lambda: golden(args.golden, device)))
    for name, run in sections:
        try:
            report[name] = run()
            if name == "correctness":
                print(json.dumps(report[name], indent=2), flush=True)
        except Exception:  # a benchmark script reports a broken section and goes on to the next
            report[name] = {"error": traceback.format_exc()}
            print(f"section {name} failed:\n{report[name]['error']}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
