"""Teacher-forced losses of trained generators on real images they were not trained on.

Training loss says how well a generator fits its training images; this says how well it predicts
others: the held-out concepts (``--split test``) or a seeded subset of any split. Every model
sees the same images, captions, timesteps and noise, so rows compare directly (unlike FID, which
also depends on sampling). Models must share the tokenizer for their token losses to compare.

    python scripts/heldout_loss.py --model openhart/weights/emoji-64 --model runs/large/final \\
        --data data/emoji-64 --split test --out heldout.json

Columns: token cross-entropy over all scales (nats), token and last-scale accuracy (argmax), and
the residual head's diffusion loss (the head completes tokens the model samples itself, with
seeded draws).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

import openhart
from openhart.data.image_folder import ImageFolderDataset
from openhart.data.images import load_image
from openhart.models.hart import HartPipeline
from openhart.training.generator_trainer import GeneratorModel, teacher_forced_losses
from openhart.training.recipe import GeneratorLossRecipe
from openhart.utils.config import atomic_write_bytes

METRICS = ("ce", "token_accuracy", "last_scale_accuracy", "diffusion")


@torch.no_grad()
def heldout_losses(
    pipeline: HartPipeline, records: list, batch_size: int, seed: int, captions: str = "own"
) -> dict[str, float]:
    """Image-weighted means of the teacher-forced metrics over ``records``.

    ``captions``: "own" (each image's caption), "shuffled" (another image's, a seeded derangement:
    how much the model uses the text) or "empty" (the unconditional branch guidance uses).
    """
    prompts = [r.caption for r in records]
    if captions == "shuffled":
        # Rotating a seeded permutation by one gives every image a caption not its own.
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed + 1)).tolist()
        prompts = [""] * len(records)
        for position, index in enumerate(order):
            prompts[index] = records[order[(position + 1) % len(order)]].caption
    elif captions == "empty":
        prompts = [""] * len(records)
    elif captions != "own":
        raise ValueError(f"captions must be own, shuffled or empty, not {captions!r}")
    model = GeneratorModel(pipeline.transformer, pipeline.diffusion_head).eval()
    size = pipeline.tokenizer.config.image_size
    loss_recipe = GeneratorLossRecipe(diffusion_batch_mul=1)
    totals = dict.fromkeys(METRICS, 0.0)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = torch.stack([load_image(r.path, size) for r in chunk])  # (B, 3, S, S) in [-1, 1]
        latents = pipeline.tokenizer.encode(images.to(pipeline.device, pipeline.dtype))
        context, mask = pipeline.encode_prompt(prompts[start : start + batch_size])
        # One seed per batch position: the same images get the same draws in every model.
        metrics = teacher_forced_losses(
            model, pipeline.tokenizer, latents, context, mask, loss_recipe, seed + start
        )
        for name in METRICS:
            totals[name] += metrics[name] * len(chunk)
    return {name: value / len(records) for name, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="a HART model (repeatable)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test", help="rows of this split (default: held-out concepts)")
    parser.add_argument("--max-images", type=int, default=None, help="a seeded subset of the split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--captions",
        choices=("own", "shuffled", "empty"),
        default="own",
        help="condition on each image's caption, another image's, or none (how much the text is used)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    records = list(ImageFolderDataset(args.data, 64, split=args.split).records)
    if args.max_images is not None and args.max_images < len(records):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed))
        records = [records[int(i)] for i in sorted(order[: args.max_images].tolist())]
    rows = []
    for name in args.model:
        pipeline = openhart.load(name, device="cpu", dtype=torch.float32)
        if not isinstance(pipeline, HartPipeline):
            raise SystemExit(f"{name}: not a HART model")
        started = time.perf_counter()
        metrics = heldout_losses(pipeline, records, args.batch_size, args.seed, args.captions)
        parameters = sum(p.numel() for p in pipeline.transformer.parameters())
        rows.append(
            {
                "model": name,
                "transformer_parameters": parameters,
                **metrics,
                "seconds": time.perf_counter() - started,
            }
        )
        print(f"{name}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in METRICS), flush=True)
    report = {
        "data": str(args.data),
        "split": args.split,
        "captions": args.captions,
        "num_images": len(records),
        "rows": rows,
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": "python scripts/heldout_loss.py "
        + " ".join(f"--model {m}" for m in args.model)
        + f" --data {args.data} --split {args.split} --captions {args.captions}"
        + (f" --max-images {args.max_images}" if args.max_images is not None else ""),
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
