"""What rFID at this image size responds to: known degradations of the originals, PSNR / SSIM / rFID each.

A tokenizer's rFID is hard to read alone: is 47 at 28.8 dB "blurry" or "wrong colours"? This
script degrades the same held-out originals that ``scripts/tokenizer_compare.py`` reconstructs, in
ways whose kind is known (Gaussian blur, Gaussian noise, a 2x down-and-up resampling), and scores
them the same way against the same cached Inception features, so a tokenizer's row can be placed
among them: a decoder whose rFID sits where blur of its PSNR sits is blurry; one far above that
line errs in some other way.

With ``--tokenizer FOLDER`` the degradations apply to that tokenizer's hybrid reconstructions
instead (still scored against the originals), after a row for the reconstructions as they are:
does smoothing a decoder's output move it toward or away from the originals in Inception's eyes?
Every row also reports ``high_band_error``: the fraction of the error's energy above half the
band (what a 2x down-and-up removes), 0.0 for pure blur-free colour shifts, ~0.75 for white noise.

    python scripts/rfid_sensitivity.py --data data/emoji-64 --split test --num-images 800 \\
        --blur 0.5 --blur 1.0 --noise 0.02 --noise 0.04 --down-up --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.data.image_folder import ImageFolderDataset
from openhart.evaluation.benchmark import environment_record
from openhart.evaluation.evaluate import DEFAULT_CACHE_DIR, data_fingerprint, real_features
from openhart.evaluation.inception import InceptionFeatureExtractor
from openhart.evaluation.metrics import fid_from_features, psnr, ssim
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.utils.frequency_bands import high_band_fraction, low_band
from openhart.utils.weights import load_component

Degradation = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) in [0, 1] → the same


def gaussian_blur(sigma: float) -> Degradation:
    """A separable Gaussian of standard deviation ``sigma`` pixels, reflected at the edges."""
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).float()

    def blur(images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[1]
        horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
        vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
        padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
        out = F.conv2d(padded, horizontal, groups=channels)
        return F.conv2d(out, vertical, groups=channels)

    return blur


def gaussian_noise(sigma: float, seed: int) -> Degradation:
    """Independent N(0, sigma²) per pixel and channel (in [0, 1] units), clipped; one fixed stream."""
    generator = torch.Generator().manual_seed(seed)

    def noise(images: torch.Tensor) -> torch.Tensor:
        return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)

    return noise


def down_up(images: torch.Tensor) -> torch.Tensor:
    """The low band of an image, clipped to [0, 1]: detail above half the band is lost."""
    return low_band(images).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blur", type=float, action="append", default=[], help="Gaussian sigma in pixels")
    parser.add_argument(
        "--noise", type=float, action="append", default=[], help="noise sigma in [0, 1] units"
    )
    parser.add_argument("--down-up", action="store_true", help="a 2x down-and-up resampling")
    parser.add_argument("--tokenizer", type=Path, default=None, help="degrade its hybrid reconstructions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="real-feature cache")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    args = parser.parse_args()
    for sigma in (*args.blur, *args.noise):
        if not sigma > 0:
            parser.error(f"--blur and --noise take sigmas > 0, got {sigma}")
    degradations: dict[str, Degradation] = {f"blur {s:g} px": gaussian_blur(s) for s in args.blur}
    degradations |= {f"noise {s:g}": gaussian_noise(s, args.seed) for s in args.noise}
    if args.down_up:
        degradations["down-up 2x"] = down_up
    if not degradations and args.tokenizer is None:
        parser.error("give at least one of --blur, --noise, --down-up (or --tokenizer)")

    dataset = ImageFolderDataset(args.data, args.image_size, split=args.split)
    count = min(args.num_images, len(dataset))
    originals = (torch.stack([dataset[i]["image"] for i in range(count)]) + 1) / 2  # (N, 3, S, S) in [0, 1]
    sources = originals
    if args.tokenizer is not None:
        tokenizer = load_component(HybridTokenizer, TokenizerConfig, args.tokenizer).eval()
        with torch.no_grad():
            sources = torch.cat(
                [
                    ((tokenizer.reconstruct(batch * 2 - 1, hybrid=True).float() + 1) / 2).clamp(0, 1)
                    for batch in originals.split(args.batch_size)
                ]
            )
        degradations = {"as reconstructed": lambda images: images} | degradations
    extractor = InceptionFeatureExtractor().eval()
    rows = []
    with torch.no_grad():
        # The same cache entry as tokenizer_compare's: the same rows, the same purpose.
        real = real_features(
            dataset.records[:count],
            args.image_size,
            extractor,
            data_fingerprint=data_fingerprint(args.data),
            purpose=f"reconstruction-{args.split}",
            cache_dir=None if args.no_cache else args.cache_dir,
        )
        for name, degrade in degradations.items():
            started = time.perf_counter()
            psnrs, ssims, features, errors = [], [], [], []
            for start in range(0, count, args.batch_size):
                target = originals[start : start + args.batch_size]
                degraded = degrade(sources[start : start + args.batch_size])
                errors.append(degraded - target)
                psnrs.append(psnr(degraded, target))
                ssims.append(ssim(degraded, target))
                features.append(extractor(degraded).cpu())
            row = {
                "degradation": name,
                "psnr": float(torch.cat(psnrs).mean()),
                "ssim": float(torch.cat(ssims).mean()),
                "rfid": fid_from_features(real, torch.cat(features)),
                "high_band_error": high_band_fraction(torch.cat(errors)),
                "seconds": time.perf_counter() - started,
            }
            rows.append(row)
            print(
                f"{name:16s} PSNR {row['psnr']:.2f} SSIM {row['ssim']:.3f} rFID {row['rfid']:.1f} "
                f"high-band error {row['high_band_error']:.2f}",
                flush=True,
            )
    if args.out is not None:
        result = {
            "command": "python " + " ".join(sys.argv),
            **environment_record(),
            "tokenizer": None if args.tokenizer is None else str(args.tokenizer),
            "split": args.split,
            "num_images": count,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
