"""One prepared GPU run: correctness on CUDA, then per-stage timings of the released architecture.

    PYTHONPATH=. python benchmarks/gpu_check.py --out results/   # on a machine with a CUDA GPU

Checks (printed with their numbers): KV-cached vs teacher-forced logits on CUDA (fp32), the same
CPU generators giving the same images on CPU and CUDA, and a bf16 run staying finite. Then
``openhart bench``'s table for hart-0.7b-1024 (batch 1 and 8) and hart-0.7b-512 (batch 1) in bf16,
random weights, CFG 4.5, 8 residual steps, text encoder included (a hash stand-in: ~0 s).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.evaluation.benchmark import benchmark_pipeline
from openhart.presets import build_pipeline
from tests.conftest import make_tiny_pipeline


def correctness(device: torch.device) -> dict:
    cpu = make_tiny_pipeline()
    gpu = make_tiny_pipeline().to(device)
    prompts = ["a red fox in the snow", "a blue car"]
    context, mask = gpu.encode_prompt(prompts)
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
    kv_error = (torch.cat(rows, 1) - teacher).abs().max().item()

    def images(pipe):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return pipe(prompts, generator=gens, output_type="pt").images

    cross_device = (images(cpu) - images(gpu)).abs().max().item()
    bf16 = images(make_tiny_pipeline().to(device, torch.bfloat16))
    return {
        "kv_vs_teacher_forced_max_abs": kv_error,
        "cpu_vs_cuda_images_max_abs": cross_device,
        "bf16_finite": bool(torch.isfinite(bf16).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    report = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__}
    report["correctness"] = correctness(device)
    print(json.dumps(report, indent=2), flush=True)
    report["benchmarks"] = []
    for preset, batch, repeats in (
        ("hart-0.7b-1024", 1, 3),
        ("hart-0.7b-1024", 8, 2),
        ("hart-0.7b-512", 1, 3),
    ):
        started = time.perf_counter()
        pipeline = build_pipeline(preset, seed=0, device=device, dtype=torch.bfloat16)
        print(f"built {preset} in {time.perf_counter() - started:.1f} s", flush=True)
        result = benchmark_pipeline(pipeline, preset=preset, batch_size=batch, warmup=1, repeats=repeats)
        print(result.table(), flush=True)
        report["benchmarks"].append(result.to_dict())
        del pipeline
        torch.cuda.empty_cache()
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
