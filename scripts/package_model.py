"""Copy a trained pipeline folder into the package as float16 safetensors (what `openhart generate`
uses without --model).

    python scripts/package_model.py runs/emoji-64-generator/final openhart/weights/emoji-64 \
        [--tokenizer runs/emoji-64-decoder-adversarial/final] [--sampler guidance_scale=2.0 ...]

``--tokenizer`` swaps in a tokenizer trained after the generator; it must give the same tokens (a
``decoder_only`` fine-tune of the pipeline's own tokenizer), which is checked on random images.

``--sampler FIELD=VALUE`` (repeatable, VALUE parsed as YAML, as
``openhart train --set`` does: numbers, null, bare words) sets the model's own sampler defaults, its
``sampler.json``: what every command uses when the user does not say otherwise.

Weights are stored in float16 to halve the download; ``HartPipeline.from_pretrained`` loads them
into float32 modules (or whatever dtype is asked for).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from openhart import HartPipeline
from openhart.training.recipe import RecipeError, apply_overrides
from openhart.training.tokenizer_trainer import load_tokenizer


@torch.no_grad()
def check_same_tokens(old: torch.nn.Module, new: torch.nn.Module) -> None:
    """The generator was trained on ``old``'s tokens: ``new`` must encode images to the same ones."""
    size = old.config.image_size
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    old_ids, old_residual = old.split(old.encode(images))
    new_ids, new_residual = new.split(new.encode(images))
    same = all(torch.equal(a, b) for a, b in zip(old_ids, new_ids, strict=True))
    if not same or not torch.allclose(old_residual, new_residual, atol=1e-5):
        raise SystemExit(
            "--tokenizer encodes to other tokens than the pipeline's: the generator would not fit it"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder to swap in")
    parser.add_argument("--sampler", action="append", default=[], help="FIELD=VALUE of SamplerSettings")
    args = parser.parse_args()
    pipeline = HartPipeline.from_pretrained(args.source)
    settings = pipeline.sampler_settings
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer).eval()
        check_same_tokens(pipeline.tokenizer, tokenizer)
        pipeline = HartPipeline(
            pipeline.text_encoder, tokenizer, pipeline.transformer, pipeline.diffusion_head
        )
    for spec in args.sampler:
        if not spec.partition("=")[2]:
            raise SystemExit(f"--sampler {spec!r}: expected FIELD=VALUE")
    try:
        overrides = apply_overrides({}, args.sampler)  # values as in `train --set`: YAML
    except RecipeError as error:
        raise SystemExit(f"--sampler: {error}") from error
    pipeline.sampler_settings = settings.replace(**overrides)  # checked: a bad field or value fails here
    print(f"sampler settings: {pipeline.sampler_settings.to_dict()}")
    pipeline.to(dtype=torch.float16).save_pretrained(args.destination)
    sizes = sum(path.stat().st_size for path in args.destination.rglob("*") if path.is_file())
    print(f"wrote {args.destination} ({sizes / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
