"""The ``unguided_last_scales`` knob on emoji-64: CPU speed (batch 1 and 16) and FID for n = 1, 2.

    HF_HUB_OFFLINE=1 python scripts/emoji64_cfg_skip.py --model runs/emoji-64-generator/final \
        --data data/emoji-64 --out docs/results/emoji64-cfg-skip.json

n = 0 is the default (CFG on every scale); its FID is the HART row of docs/results/eval-hart.
The evaluation settings are those of scripts/emoji64_comparison.py (1000 images, 200 adherence
prompts, 2000 references), so the numbers compare with the README's results table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.evaluation.evaluate import evaluate


def median_seconds(pipe: HartPipeline, prompts: list[str], unguided: int, repeats: int = 5) -> float:
    pipe(prompts, generator=torch.Generator().manual_seed(0), unguided_last_scales=unguided)  # warm-up
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        pipe(prompts, generator=torch.Generator().manual_seed(seed), unguided_last_scales=unguided)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pipe = HartPipeline.from_pretrained(args.model)
    prompts = [f"prompt {i}: red apple emoji, noto style" for i in range(16)]
    out: dict[int, dict[str, float]] = {}
    for n in (0, 1, 2, 3):
        out[n] = {
            "latency_b1_s": median_seconds(pipe, prompts[:1], n),
            "images_per_s_b16": 16 / median_seconds(pipe, prompts, n),
        }
        print(n, out[n], flush=True)
    for n in (1, 2):
        result = evaluate(
            pipe,
            args.data,
            num_images=1000,
            variant="hart",
            adherence_images=200,
            reference_images=2000,
            reconstruction_images=0,
            generation_kwargs={"unguided_last_scales": n},
            output_dir=args.out.parent / f"eval-hart-unguided-{n}",
            progress=False,
        )
        out[n].update(
            fid=result["fid"],
            kid=result["kid_mean"],
            precision=result["precision"],
            recall=result["recall"],
            top1=result["adherence"]["top1"],
            top5=result["adherence"]["top5"],
        )
        print(n, out[n], flush=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
