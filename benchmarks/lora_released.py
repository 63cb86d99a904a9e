"""LoRA fine-tuning of the released HART-0.7B architecture: seconds per step and peak memory.

    python benchmarks/lora_released.py --qwen /tmp/qwen2-1.5b-random --work /tmp/lora-released \
        --preset hart-0.7b-512 --batch-size 4 --steps 2 --device cpu --out lora-released-cpu.json

What ``openhart train lora`` runs, in this process so its memory can be read: the base is the
``--preset`` (``hart-0.7b-512``) with random weights (seed 0; speed and memory do not depend on the
values) and a Qwen2-1.5B-shaped text encoder (``benchmarks/laptop_table.py make-qwen`` makes one),
saved once as a pipeline folder under ``--work``; the data are ``--images`` emoji-64 images with
one caption shared by all, so the text encoder runs once, in step 1, and later steps are the
adapter's steady state. Rank-8 adapters on attention and MLP, bf16 autocast, gradient
checkpointing (the recipe the docs give for the 0.7B model).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the steps; on a CPU the resident-set
high-water mark (VmHWM) of loading and of the steps, each on its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from laptop_table import peak_rss_bytes, released_stand_in, reset_peak_rss

from openhart.evaluation.benchmark import environment_record
from openhart.training.lora_recipe import data_spec, load_lora_recipe
from openhart.utils.distributed import cleanup_distributed, init_distributed

CAPTION = "a red apple emoji, flat style"


def make_base(folder: Path, preset: str, qwen: Path | None) -> None:
    """The preset's shapes with random weights (seed 0), saved once; the trainer reads them in fp32.

    The released sizes get the Qwen2-1.5B-shaped encoder of ``qwen``; other presets (``tiny``, for
    a quick check of this script) their own text encoder.
    """
    if (folder / "model_index.json").is_file():
        return
    if preset.startswith("hart-0.7b-"):
        if qwen is None:
            raise SystemExit(f"--preset {preset} needs --qwen (benchmarks/laptop_table.py make-qwen DIR)")
        pipeline = released_stand_in(int(preset.rsplit("-", 1)[1]), qwen, torch.bfloat16)
    else:
        from openhart.presets import build_pipeline

        pipeline = build_pipeline(preset, seed=0)
    pipeline.save_pretrained(folder)


def make_data(folder: Path, source: Path, count: int) -> None:
    """``count`` images of the emoji-64 folder, each with the same caption (the trainer resizes them)."""
    images = sorted((source / "images").rglob("*.png"))[:count]
    if len(images) < count:
        raise SystemExit(f"{source}: {len(images)} images, need {count} (openhart data emoji)")
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        shutil.copy(image, folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(CAPTION, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="hart-0.7b-512", help="hart-0.7b-512, hart-0.7b-1024, or tiny")
    parser.add_argument(
        "--qwen", type=Path, default=None, help="Qwen2-1.5B-shaped folder (laptop_table make-qwen)"
    )
    parser.add_argument("--work", type=Path, required=True, help="base model, data and run folders go here")
    parser.add_argument("--data", type=Path, default=Path("data/emoji-64"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--steps", type=int, default=2, help="optimiser steps; step 1 also encodes the caption"
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args()

    base, data, run = args.work / "base", args.work / "data", args.work / "run"
    started = time.perf_counter()
    make_base(base, args.preset, args.qwen)
    make_data(data, args.data, args.images)
    shutil.rmtree(run, ignore_errors=True)
    recipe = load_lora_recipe(
        None,
        [],
        {
            "model": str(base),
            "data.train": data_spec(str(data)),
            "run.out_dir": str(run),
            "optim.max_steps": args.steps,
            "data.batch_size": args.batch_size,
            "gradient_checkpointing": True,
            "run.precision": "bf16",
            "run.device": args.device,
            "run.sample_every": 0,
            "run.checkpoint_every": 0,
            "run.log_every": 1,
        },
    )
    ctx = init_distributed(recipe.run.device)
    from openhart.training.lora_trainer import LoraTrainer

    try:
        load_start = time.perf_counter()
        trainer = LoraTrainer(recipe, resume=False, ctx=ctx)
        load_seconds = time.perf_counter() - load_start
        cuda = ctx.device.type == "cuda"
        load_peak = torch.cuda.max_memory_allocated(ctx.device) if cuda else peak_rss_bytes()
        if cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        else:
            reset_peak_rss()
        result = trainer.train()
        train_peak = torch.cuda.max_memory_allocated(ctx.device) if cuda else peak_rss_bytes()
        trainer_image_size = trainer.image_size
        model = trainer.model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    finally:
        cleanup_distributed()

    with (run / "metrics.csv").open(newline="") as file:  # one row per step (run.log_every 1)
        steps = [
            {"step": int(row["step"]), "seconds": 1.0 / float(row["steps_per_s"]), "loss": float(row["loss"])}
            for row in csv.DictReader(file)
        ]
    adapter = run / "final" / "adapter_model.safetensors"
    record = {
        "command": " ".join(["python", *sys.argv]),
        **environment_record(),
        "device": str(ctx.device),
        "preset": args.preset,
        "image_size": trainer_image_size,
        "batch_size": args.batch_size,
        "finished": result.finished,
        "trainable_parameters": trainable,
        "frozen_parameters": frozen,
        "adapter_bytes": adapter.stat().st_size if adapter.is_file() else None,
        "load_seconds": load_seconds,
        "steps": steps,
        "steady_seconds_per_step": steps[-1]["seconds"] if len(steps) > 1 else None,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process VmHWM",
        "load_peak_gib": load_peak / 2**30,
        "train_peak_gib": train_peak / 2**30,
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
