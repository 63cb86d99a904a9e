"""How low can a generator's FID go on this data with this tokenizer? The floor and the ceiling.

``openhart eval`` compares N generated images with N real train-split rows. A generator cannot do
better than its tokenizer's decoder, and no model at all can beat the sampling noise of N images.
This measures both against the very rows ``openhart eval --num-images N --seed S`` uses:

- **floor**: N *other* real train rows against them (a perfect generator's FID at this N);
- **ceiling** of each tokenizer: those other rows encoded and decoded (discrete-only and hybrid)
  against them (a generator that samples the training distribution's tokens perfectly).

A generation FID close to its tokenizer's ceiling says that a better generator gains little and the
decoder is the limit; far above it, the generator is.

    python scripts/fid_ceiling.py --data data/emoji-64 --num-images 1000 \\
        --tokenizer 8x8=openhart/weights/emoji-64/tokenizer \\
        --tokenizer 16x16=runs/emoji-64-decoder-latent16-adversarial/final/tokenizer --out ceiling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizer_compare import load_tokenizers, parse_named  # this script's folder is on sys.path when it runs

from openhart.data.image_folder import ImageFolderDataset
from openhart.evaluation.adherence import seeded_subset
from openhart.evaluation.benchmark import environment_record
from openhart.evaluation.inception import InceptionFeatureExtractor
from openhart.evaluation.metrics import fid_from_features, reconstruction_metrics

# The eval draws its FID rows with stream 0 of the seed; the other rows are drawn, with another
# stream, from the rows it left, so the two sets are disjoint.
OTHER_ROWS_STREAM = 17


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=parse_named, action="append", required=True, help="NAME=FOLDER")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="train", help="the split openhart eval's FID rows come from")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="openhart eval's --seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    tokenizers, image_size = load_tokenizers(args.tokenizer)
    dataset = ImageFolderDataset(args.data, image_size)
    rows = [r for r in dataset.records if r.extra.get("split") == args.split]
    if 2 * args.num_images > len(rows):
        raise SystemExit(
            f"--num-images {args.num_images}: split {args.split!r} has {len(rows)} rows, need twice that"
        )
    eval_rows = seeded_subset(rows, args.num_images, args.seed, stream=0)
    taken = {r.key for r in eval_rows}
    rest = [r for r in rows if r.key not in taken]
    other_rows = seeded_subset(rest, args.num_images, args.seed, stream=OTHER_ROWS_STREAM)
    index = {r.key: i for i, r in enumerate(dataset.records)}

    def pixels(records: list) -> torch.Tensor:  # (N, 3, S, S) in [-1, 1]
        return torch.stack([dataset[index[r.key]]["image"] for r in records])

    extractor = InceptionFeatureExtractor().eval()
    started = time.perf_counter()
    reference = extractor.extract(((pixels(eval_rows) + 1) / 2).clamp(0, 1), batch_size=64)
    others = pixels(other_rows)
    floor = fid_from_features(reference, extractor.extract(((others + 1) / 2).clamp(0, 1), batch_size=64))
    print(f"floor (other real rows)      FID {floor:.1f}")
    results = []
    for (name, folder), tokenizer in zip(args.tokenizer, tokenizers.values(), strict=True):
        metrics = reconstruction_metrics(
            tokenizer.eval(), others, batch_size=args.batch_size, extractor=extractor, real_features=reference
        )
        results.append({"name": name, "folder": str(folder), **metrics})
        print(
            f"ceiling {name:20s} FID discrete {metrics['discrete']['rfid']:.1f}, "
            f"hybrid {metrics['hybrid']['rfid']:.1f}"
        )
    if args.out is not None:
        record = {
            "command": "python " + " ".join(sys.argv),
            **environment_record(),
            "split": args.split,
            "num_images": args.num_images,
            "seed": args.seed,
            "floor_fid": floor,
            "tokenizers": [
                {
                    "name": r["name"],
                    "folder": r["folder"],
                    "discrete_fid": r["discrete"]["rfid"],
                    "hybrid_fid": r["hybrid"]["rfid"],
                    "discrete_psnr": r["discrete"]["psnr"],
                    "hybrid_psnr": r["hybrid"]["psnr"],
                }
                for r in results
            ],
            "seconds": time.perf_counter() - started,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
