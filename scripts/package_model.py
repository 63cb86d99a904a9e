"""Copy a trained pipeline folder into the package as float16 safetensors (what `openhart generate`
uses without --model).

    python scripts/package_model.py runs/emoji-64-generator/final openhart/weights/emoji-64

Weights are stored in float16 to halve the download; ``HartPipeline.from_pretrained`` loads them
into float32 modules (or whatever dtype is asked for).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from openhart import HartPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    pipeline = HartPipeline.from_pretrained(args.source)
    pipeline.to(dtype=torch.float16).save_pretrained(args.destination)
    sizes = sum(path.stat().st_size for path in args.destination.rglob("*") if path.is_file())
    print(f"wrote {args.destination} ({sizes / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
