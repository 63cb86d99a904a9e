"""Deepen a trained pipeline's transformer (new blocks start as the identity) and save the pipeline.

    python scripts/grow_generator.py candidates/emoji-64-latent16 runs/grown --depth 10

The saved pipeline generates what the source does (checked here on a teacher-forced pass of random
tokens: the largest logit difference is printed and must be below 1e-4); train it further with a
recipe whose ``pipeline:`` points at the output folder, e.g.
``configs/emoji-64-generator-latent16-deep.yaml``. See ``openhart/transformer/growth.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.transformer.growth import GrowthError, deepen
from openhart.transformer.model import HartTransformer


@torch.no_grad()
def largest_logit_difference(old: HartTransformer, new: HartTransformer, generator: torch.Generator) -> float:
    cfg = old.config
    context = torch.randn(2, cfg.context_tokens, cfg.context_dim, generator=generator)
    mask = torch.ones(2, cfg.context_tokens, dtype=torch.bool)
    mask[1, cfg.context_tokens // 2 :] = False
    inputs = torch.randn(2, cfg.num_image_tokens - 1, cfg.latent_channels, generator=generator)
    return (old(context, mask, inputs).logits - new(context, mask, inputs).logits).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--depth", type=int, required=True, help="blocks of the grown transformer")
    parser.add_argument("--seed", type=int, default=0, help="seeds the new blocks' input weights")
    args = parser.parse_args()
    if args.destination.exists():
        raise SystemExit(f"{args.destination} exists: choose a new folder")
    pipeline = HartPipeline.from_pretrained(args.source)  # float32
    try:
        grown = deepen(pipeline.transformer, args.depth, torch.Generator().manual_seed(args.seed))
    except GrowthError as error:
        raise SystemExit(str(error)) from error
    difference = largest_logit_difference(
        pipeline.transformer.eval(), grown.eval(), torch.Generator().manual_seed(1)
    )
    print(f"largest logit difference, source vs grown: {difference:.2e}")
    if difference > 1e-4:
        raise SystemExit("the grown transformer computes something else: not saved")
    result = HartPipeline(pipeline.text_encoder, pipeline.tokenizer, grown, pipeline.diffusion_head)
    result.sampler_settings = pipeline.sampler_settings
    result.save_pretrained(args.destination)  # float32: training continues from it
    parameters = sum(p.numel() for p in grown.parameters())
    print(f"wrote {args.destination}: transformer depth {args.depth}, {parameters / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
