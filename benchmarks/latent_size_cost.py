"""What a larger latent costs the generator: training images/s and generation latency, 8x8 vs 16x16.

The reconstruction side of "does 64 px want a 16x16 latent?" is measured by ``openhart eval``
on the two tokenizers (configs/emoji-64-tokenizer.yaml vs configs/emoji-64-tokenizer-latent16.yaml).
This is the other side: the emoji-64 transformer and residual head (same widths and depth) on
each tokenizer's scale schedule, timed in one process, in alternating rounds, on the same
batches:

- training: ``GeneratorTrainer`` optimiser steps of the emoji-64 generator recipe (bf16
  autocast, batch 32), with and without HART's token subsampling of the last scale for the
  16x16 schedule (the release's answer to long last scales);
- generation: one pipeline call at batch 1 (the shipped sampler: guidance 2.0, temperature 0.6,
  8 residual steps) with random transformer weights: cost does not depend on what they learnt.

    python benchmarks/latent_size_cost.py --tokenizer-8 openhart/weights/emoji-64/tokenizer \\
        --tokenizer-16 runs/emoji-64-tokenizer-latent16/final/tokenizer --out docs/results/x.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import time_steps  # this folder: the same timed optimiser steps

from openhart.diffusion import ResidualDiffusionHead
from openhart.evaluation.benchmark import environment_record
from openhart.models.hart import HartPipeline
from openhart.presets import preset_configs
from openhart.text import load_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.training.generator_trainer import GeneratorTrainer
from openhart.training.recipe import load_recipe
from openhart.transformer import HartTransformer
from openhart.utils.weights import load_component

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "openhart" / "weights" / "emoji-64"
PROMPT = "a happy dog"


def patch_nums_of(tokenizer_folder: Path) -> list[int]:
    return json.loads((tokenizer_folder / "config.json").read_text())["patch_nums"]


def build_trainer(tokenizer: Path, subsample: bool, data: str, out_dir: Path, batch: int) -> GeneratorTrainer:
    overrides = [
        f"tokenizer_from={tokenizer}",
        f"transformer.patch_nums={patch_nums_of(tokenizer)}",
        f"data.train.root={data}",
        f"data.batch_size={batch}",
        f"loss.token_subsampling={'true' if subsample else 'false'}",
        "run.precision=bf16",
        "run.progress=false",
        "run.checkpoint_every=0",
        "run.sample_every=0",
    ]
    recipe = load_recipe(ROOT / "configs" / "emoji-64-generator.yaml", overrides)
    return GeneratorTrainer(recipe, out_dir=out_dir)


def build_pipeline(tokenizer_folder: Path) -> HartPipeline:
    """The shipped text encoder, ``tokenizer_folder``'s tokenizer, a random transformer and head."""
    configs = preset_configs("emoji-64")
    patch_nums = tuple(patch_nums_of(tokenizer_folder))
    torch.manual_seed(0)
    pipeline = HartPipeline(
        text_encoder=load_text_encoder(SHIPPED / "text_encoder"),
        tokenizer=load_component(HybridTokenizer, TokenizerConfig, tokenizer_folder),
        transformer=HartTransformer(configs.transformer.replace(patch_nums=patch_nums)),
        diffusion_head=ResidualDiffusionHead(configs.diffusion_head),
    )
    return pipeline.eval()


def time_generation(pipeline: HartPipeline) -> float:
    started = time.perf_counter()
    pipeline(
        PROMPT,
        guidance_scale=2.0,
        temperature=0.6,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(0),
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer-8", type=Path, default=SHIPPED / "tokenizer")
    parser.add_argument("--tokenizer-16", type=Path, required=True)
    parser.add_argument("--data", default="data/emoji-64")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5, help="timed pipeline calls per round")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    variants = {
        "8x8": (args.tokenizer_8, False),
        "16x16": (args.tokenizer_16, False),
        "16x16+token_subsampling": (args.tokenizer_16, True),
    }
    train_speeds: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        trainers, batches = {}, {}
        for index, (name, (tokenizer, subsample)) in enumerate(variants.items()):
            trainer = build_trainer(
                tokenizer, subsample, args.data, Path(scratch) / str(index), args.batch_size
            )
            stream = trainer.batches()
            batches[name] = [next(stream) for _ in range(args.steps)]
            time_steps(trainer, batches[name])  # untimed: latent and caption caches filled
            trainers[name] = trainer
        for _ in range(args.rounds):
            for name in variants:
                train_speeds[name].append(time_steps(trainers[name], batches[name]))
        del trainers, batches

    pipelines = {"8x8": build_pipeline(args.tokenizer_8), "16x16": build_pipeline(args.tokenizer_16)}
    call_seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    with torch.inference_mode():
        for pipeline in pipelines.values():
            time_generation(pipeline)  # warm-up
        for _ in range(args.rounds):
            for name, pipeline in pipelines.items():
                call_seconds[name].extend(time_generation(pipeline) for _ in range(args.calls))

    base_train = statistics.median(train_speeds["8x8"])
    base_call = statistics.median(call_seconds["8x8"])
    rows = []
    for name, (tokenizer, subsample) in variants.items():
        speed = statistics.median(train_speeds[name])
        row = {
            "variant": name,
            "patch_nums": patch_nums_of(tokenizer),
            "tokens_per_image": sum(p * p for p in patch_nums_of(tokenizer)),
            "token_subsampling": subsample,
            "train_images_per_s": speed,
            "train_rounds": train_speeds[name],
            "train_ratio_to_8x8": speed / base_train,
        }
        if name in call_seconds:
            seconds = statistics.median(call_seconds[name])
            row |= {"generate_s": seconds, "generate_ratio_to_8x8": seconds / base_call}
        rows.append(row)
        generate = (
            f"  generate {row['generate_s']:.3f} s ({row['generate_ratio_to_8x8']:.2f}x)"
            if "generate_s" in row
            else ""
        )
        print(
            f"{name:24s} {row['tokens_per_image']:4d} tokens  train {speed:6.1f} images/s "
            f"({row['train_ratio_to_8x8']:.2f}x){generate}"
        )
    if args.out is not None:
        result = {
            "command": "python " + " ".join(sys.argv),
            **environment_record(),
            "batch_size": args.batch_size,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
