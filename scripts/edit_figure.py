"""The editing figure of the README: a held-out image, its mask, and the inpainting of three seeds.

    openhart data emoji --out data/emoji-64            # or --set noto: the held-out split is the same
    python scripts/edit_figure.py --model openhart/weights/emoji-64 --data data/emoji-64 \\
        --image images/noto/1f353.png --prompt "red apple emoji, noto style" --out docs/images/emoji64-edit.png

The image must be of the held-out split (``split == "test"`` in metadata.jsonl: its concept was
never trained on); the script refuses others. The mask is a box (``--box left,top,right,bottom``
in pixels, default the middle half); the panels are upscaled ``--zoom`` times, nearest neighbour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from openhart import HartPipeline
from openhart.utils.images import save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the emoji dataset folder (metadata.jsonl)")
    parser.add_argument("--image", required=True, help="file_name of a held-out image in metadata.jsonl")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--box", default="16,16,48,48", help="mask box left,top,right,bottom in pixels")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--zoom", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rows = [json.loads(line) for line in (args.data / "metadata.jsonl").read_text().splitlines() if line]
    row = next((r for r in rows if r["file_name"] == args.image), None)
    if row is None or row.get("split") != "test":
        raise SystemExit(f"--image: {args.image} is not a held-out (split 'test') image of {args.data}")
    pipe = HartPipeline.from_pretrained(args.model)
    image = Image.open(args.data / args.image).convert("RGB")
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rectangle([int(v) for v in args.box.split(",")], fill=255)
    seeds = [int(s) for s in args.seeds.split(",")]
    edits = pipe.edit(
        args.prompt,
        image,
        mask,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images

    panels = [image, mask.convert("RGB"), *edits]
    width, height = image.width * args.zoom, image.height * args.zoom
    figure = Image.new("RGB", (len(panels) * (width + 8) - 8, height), "white")
    for i, panel in enumerate(panels):
        figure.paste(panel.resize((width, height), Image.NEAREST), (i * (width + 8), 0))
    save_png(figure, args.out)
    print(f"wrote {args.out}: {row['text']!r} | mask | {args.prompt!r}, seeds {seeds}")


if __name__ == "__main__":
    main()
