"""Figures and numbers for the emoji-64 model card: held-out sample grid and reconstruction PSNR.

    python scripts/emoji64_report.py --model openhart/weights/emoji-64 --data data/emoji-64 --out docs/images

Writes ``emoji64-heldout-grid.png`` (16 prompts of held-out concepts, one image each, fixed seeds)
and ``emoji64-report.json`` (reconstruction PSNR/SSIM of the tokenizer on held-out images,
discrete-only vs hybrid, and the prompts used).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.cli import make_grid, save_png
from openhart.data.datasets import ImageFolderDataset
from openhart.data.emoji import heldout_prompts
from openhart.evaluation.metrics import reconstruction_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-recon", type=int, default=512, help="held-out images for the PSNR")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = HartPipeline.from_pretrained(args.model)
    prompts = heldout_prompts(args.data, 16)
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, generator=generators).images
    save_png(make_grid(images, columns=8), args.out / "emoji64-heldout-grid.png")

    heldout = ImageFolderDataset(args.data, pipe.image_size, split="test")
    count = min(args.num_recon, len(heldout))
    batch = torch.stack([heldout[i]["image"] for i in range(count)])
    with torch.no_grad():
        recon = reconstruction_metrics(pipe.tokenizer, batch)
    report = {"heldout_prompts": prompts, "reconstruction_heldout": recon, "num_recon_images": count}
    (args.out / "emoji64-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
