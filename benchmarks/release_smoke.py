"""Release-size smoke run: hart-0.7b-1024 with random weights → official layout → load → one image.

    python benchmarks/release_smoke.py --out /tmp/release-smoke [--dtype bfloat16]

Builds the released architecture, writes it in the official on-disk layout (llm/ + tokenizer/),
loads it back through ``HartPipeline.from_pretrained`` (the official-layout path, with a hash text
encoder of the Qwen2 shape), checks the weights survived exactly, and times one 1024 px image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.compat import official_sampler_settings, save_official_layout
from openhart.presets import build_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    timings = {}
    start = time.perf_counter()
    pipe = build_pipeline("hart-0.7b-1024", seed=0)
    timings["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    save_official_layout(pipe, args.out / "official")
    timings["save_official_s"] = time.perf_counter() - start
    start = time.perf_counter()
    loaded = HartPipeline.from_pretrained(args.out / "official", text_encoder=pipe.text_encoder)
    timings["load_official_s"] = time.perf_counter() - start
    exact = all(
        torch.equal(tensor, loaded.components[name].state_dict()[key])
        for name in ("tokenizer", "transformer", "diffusion_head")
        for key, tensor in pipe.components[name].state_dict().items()
    )
    del pipe
    loaded.to(args.device, getattr(torch, args.dtype))
    settings = official_sampler_settings(loaded.transformer.config.num_scales)
    start = time.perf_counter()
    image = loaded(
        "a red fox in the snow", generator=torch.Generator().manual_seed(0), sampler=settings
    ).images[0]
    timings["generate_s"] = time.perf_counter() - start
    image.save(args.out / "release-smoke.png")
    report = {
        "weights_exact_after_official_round_trip": exact,
        "image_size": image.size,
        "dtype": args.dtype,
        **timings,
    }
    print(json.dumps(report, indent=2))
    (args.out / "release_smoke.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
