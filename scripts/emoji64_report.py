"""Figures and numbers for the emoji-64 model card: held-out sample grid and reconstruction PSNR.

    python scripts/emoji64_report.py --model openhart/weights/emoji-64 --data data/emoji-64 --out docs/images

Writes ``emoji64-train-grid.png`` (16 prompts of *training* concepts, written as a user would
type them), ``emoji64-heldout-grid.png`` (16 prompts of held-out concepts), seeds 0..15 in both,
and ``emoji64-report.json`` (reconstruction PSNR/SSIM of the tokenizer on held-out images,
discrete-only vs hybrid, and the prompts used).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.command_setup import resolve_dtype
from openhart.data.datasets import ImageFolderDataset
from openhart.data.emoji import heldout_prompts
from openhart.evaluation.metrics import reconstruction_metrics
from openhart.utils.images import pil_grid, save_png

# (prompt as a user types it, the dataset concept it names): every concept must be in the train split.
TRAINING_CONCEPT_PROMPTS = (
    ("a grinning face", "grinning face"),
    ("a red apple", "red apple"),
    ("a dog face", "dog face"),
    ("a rocket", "rocket"),
    ("thumbs up", "thumbs up"),
    ("a red heart", "red heart"),
    ("a cat face", "cat face"),
    ("a birthday cake", "birthday cake"),
    ("a car", "automobile"),
    ("a tree", "deciduous tree"),
    ("a banana", "banana"),
    ("a ghost", "ghost"),
    ("fire", "fire"),
    ("a rainbow", "rainbow"),
    ("a penguin", "penguin"),
    ("a light bulb", "light bulb"),
)


def check_training_concepts(data: Path) -> None:
    """Every concept of TRAINING_CONCEPT_PROMPTS is in the dataset and never in its held-out split."""
    splits: dict[str, set[str]] = {}
    with open(data / "metadata.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            splits.setdefault(row["concept"], set()).add(row["split"])
    wrong = [c for _, c in TRAINING_CONCEPT_PROMPTS if splits.get(c) != {"train"}]
    if wrong:
        raise SystemExit(f"not training-only concepts of {data}: {wrong}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-recon", type=int, default=512, help="held-out images for the PSNR")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto: what `openhart generate --dtype auto` picks on this machine for the model",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"), str(args.model))
    pipe = HartPipeline.from_pretrained(args.model, dtype=dtype)
    check_training_concepts(args.data)
    train_prompts = [prompt for prompt, _ in TRAINING_CONCEPT_PROMPTS]
    prompts = heldout_prompts(args.data, 16)
    for name, grid_prompts in (("train", train_prompts), ("heldout", prompts)):
        generators = [torch.Generator().manual_seed(i) for i in range(len(grid_prompts))]
        images = pipe(grid_prompts, generator=generators).images
        save_png(pil_grid(images, columns=8), args.out / f"emoji64-{name}-grid.png")

    heldout = ImageFolderDataset(args.data, pipe.image_size, split="test")
    count = min(args.num_recon, len(heldout))
    batch = torch.stack([heldout[i]["image"] for i in range(count)])
    with torch.no_grad():
        recon = reconstruction_metrics(pipe.tokenizer.float(), batch)  # PSNR of the weights, in float32
    report = {
        "dtype": str(dtype).removeprefix("torch."),
        "train_prompts": train_prompts,
        "heldout_prompts": prompts,
        "reconstruction_heldout": recon,
        "num_recon_images": count,
    }
    (args.out / "emoji64-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
