"""Training throughput (images/s) of the tokenizer and generator trainers, variants side by side.

Machines differ and shared ones are noisy, so every variant runs in the same process, in
alternating rounds, on the same batches, and the table reports each one's median images/s and its
ratio to the first variant of its trainer. Before timing, every variant runs all its batches once
untimed: that fills the generator's latent and caption caches (steady state, as after the first
epoch of a long run) and lets oneDNN pick its kernels.

    python benchmarks/train_throughput.py --data data/emoji-64 --out benchmarks/results/train_throughput_cpu.json

Variants: ``tokenizer:`` ``fp32``, ``bf16``, ``bf16+channels_last``, ``fp32+adversarial``, ``bf16+adversarial``
(discriminator on from step 1) and ``bf16+adversarial+channels_last``; ``generator:fp32`` and
``generator:bf16``; each from a recipe in configs/ at its own batch size (or ``--batch-size``):
``--tokenizer-recipe`` and ``--generator-recipe``, by default the recipes of the embedded
emoji-64 (its 16x16 latent, its 64-channel decoder, its generator's self-correction rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from openhart.evaluation.benchmark import environment_record
from openhart.training.batches import Batch
from openhart.training.generator_trainer import GeneratorTrainer
from openhart.training.loop import Trainer
from openhart.training.recipe import load_recipe
from openhart.training.tokenizer_trainer import TokenizerTrainer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "tokenizer:fp32",
    "tokenizer:bf16",
    "tokenizer:bf16+channels_last",
    "tokenizer:fp32+adversarial",
    "tokenizer:bf16+adversarial",
    "tokenizer:bf16+adversarial+channels_last",
    "generator:fp32",
    "generator:bf16",
)
DEFAULT_TOKENIZER_RECIPE = ROOT / "configs" / "emoji-64-tokenizer-latent16-adversarial.yaml"
DEFAULT_GENERATOR_RECIPE = ROOT / "configs" / "emoji-64-generator-latent16-self-correction.yaml"


def build_trainer(
    variant: str,
    data: str,
    out_dir: Path,
    batch_size: int | None,
    tokenizer_recipe: Path = DEFAULT_TOKENIZER_RECIPE,
    generator_recipe: Path = DEFAULT_GENERATOR_RECIPE,
) -> Trainer:
    kind, options = variant.split(":")
    precision, *extras = options.split("+")
    overrides = [
        f"data.train.root={data}",
        f"run.precision={precision}",
        "run.progress=false",
        "run.checkpoint_every=0",
        "run.sample_every=0",
        "run.channels_last=" + ("true" if "channels_last" in extras else "false"),
    ]
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    if kind == "tokenizer":
        overrides.append("adversarial.weight=" + ("0.5" if "adversarial" in extras else "0"))
        overrides.append("adversarial.start_step=0")
        recipe = load_recipe(tokenizer_recipe, overrides)
        return TokenizerTrainer(recipe, out_dir=out_dir)
    recipe = load_recipe(generator_recipe, overrides)
    return GeneratorTrainer(recipe, out_dir=out_dir)


def _shown(value: object) -> str:
    """A command-line value as a reader reruns it: paths inside the repository relative to it."""
    if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
        return str(value.resolve().relative_to(ROOT))
    return str(value)


def time_steps(trainer: Trainer, batches: list[Batch]) -> float:
    """Images per second of optimiser steps over ``batches`` (no checkpoints, no logging)."""
    images = 0
    started = time.perf_counter()
    for batch in batches:
        trainer.step += 1
        trainer._optimizer_step(batch, trainer.step)
        images += batch.images.shape[0]
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/emoji-64")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tokenizer-recipe", type=Path, default=DEFAULT_TOKENIZER_RECIPE)
    parser.add_argument("--generator-recipe", type=Path, default=DEFAULT_GENERATOR_RECIPE)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    with tempfile.TemporaryDirectory() as scratch:
        trainers: dict[str, Trainer] = {}
        batches: dict[str, list[Batch]] = {}
        for index, variant in enumerate(variants):
            trainer = build_trainer(
                variant,
                args.data,
                Path(scratch) / str(index),
                args.batch_size,
                args.tokenizer_recipe,
                args.generator_recipe,
            )
            stream = trainer.batches()
            batches[variant] = [next(stream) for _ in range(args.steps)]
            time_steps(trainer, batches[variant])  # untimed: caches filled, kernels chosen
            trainers[variant] = trainer
        speeds: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(args.rounds):
            for variant in variants:
                speeds[variant].append(time_steps(trainers[variant], batches[variant]))

    rows = []
    first_of_kind: dict[str, float] = {}
    for variant in variants:
        kind = variant.split(":")[0]
        median = statistics.median(speeds[variant])
        first_of_kind.setdefault(kind, median)
        rows.append(
            {
                "variant": variant,
                "batch_size": batches[variant][0].images.shape[0],
                "images_per_s": median,
                "rounds": speeds[variant],
                "ratio_to_first_of_its_trainer": median / first_of_kind[kind],
            }
        )
        print(
            f"{variant:28s} batch {rows[-1]['batch_size']:3d}  {median:7.1f} images/s  "
            f"({rows[-1]['ratio_to_first_of_its_trainer']:.2f}x)"
        )
    if args.out is not None:
        result = {
            "command": "python benchmarks/train_throughput.py "
            + " ".join(
                f"--{k.replace('_', '-')} {_shown(v)}"
                for k, v in vars(args).items()
                if v is not None and k != "out"
            ),
            **environment_record(),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
