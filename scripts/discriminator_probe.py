"""Can a PatchGAN tell a tokenizer's reconstructions from the real images, trained on its own?

The adversarial tokenizer recipe needs a discriminator that sees what the decoder gets wrong. This
probe trains one, alone (the decoder frozen, no adversarial term on it), on real training images
against the tokenizer's reconstructions of them (half hybrid, half discrete-only, as the trainer
alternates), and every ``--eval-every`` steps reports on held-out images:

* the hinge loss (1.0 for a discriminator that outputs 0 everywhere);
* the mean real and fake logits;
* pair accuracy: how often an image's mean patch logit is higher than its own reconstruction's.

The hinge loss alone misleads: the logits drift together between steps, so a discriminator that
ranks nearly every pair right can still sit near 1.0. Pair accuracy alone flatters: an untrained
discriminator already ranks most pairs right (smoother images, smaller responses from random
filters). The gap between the two mean logits is the measure to watch.

    python scripts/discriminator_probe.py --tokenizer openhart/weights/emoji-64/tokenizer \\
        --data data/emoji-64 --out docs/results/emoji64-latent16/discriminator-probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.data.datasets import build_dataset
from openhart.evaluation.benchmark import environment_record
from openhart.tokenizer.hybrid import HybridTokenizer
from openhart.training.adversarial import PatchDiscriminator, discriminator_loss
from openhart.training.tokenizer_trainer import load_tokenizer


def sample_images(data: str, split: str, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` images of ``split``, drawn without replacement: (count, 3, size, size) in [−1, 1]."""
    dataset = build_dataset({"type": "imagefolder", "root": data, "split": split}, size)
    if count > len(dataset):
        raise SystemExit(f"--{split}-images {count}: the {split} split has {len(dataset)} images")
    order = torch.randperm(len(dataset), generator=generator)[:count]
    return torch.stack([dataset[int(index)]["image"] for index in order])


@torch.no_grad()
def reconstructions(tokenizer: HybridTokenizer, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Alternate chunks hybrid and discrete-only, as the tokenizer trainer alternates its branches."""
    parts = [
        tokenizer.reconstruct(images[start : start + chunk], hybrid=(start // chunk) % 2 == 0)
        for start in range(0, len(images), chunk)
    ]
    return torch.cat(parts)


@torch.no_grad()
def held_out_report(
    discriminator: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor
) -> dict[str, float]:
    real_logits, fake_logits = discriminator(torch.cat([real, fake])).chunk(2)  # (N, 1, P, P) each
    per_image_real = real_logits.mean(dim=(1, 2, 3))
    per_image_fake = fake_logits.mean(dim=(1, 2, 3))
    return {
        "hinge": discriminator_loss(real_logits, fake_logits).item(),
        "logit_real": per_image_real.mean().item(),
        "logit_fake": per_image_fake.mean().item(),
        "pair_accuracy": (per_image_real > per_image_fake).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (a model's tokenizer/)")
    parser.add_argument("--data", default="data/emoji-64")
    parser.add_argument("--train-images", type=int, default=1536)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    # Defaults: the trainer's discriminator at its first tuned rate (64 channels, 2 stride-2 layers,
    # AdamW(1e-4, (0.5, 0.9))); the warm-up recipe now trains it at --lr 4e-4.
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()

    started = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer).float().eval()
    size = tokenizer.config.image_size
    draw = torch.Generator().manual_seed(args.seed)
    train_real = sample_images(args.data, "train", args.train_images, size, draw)
    test_real = sample_images(args.data, "test", args.test_images, size, draw)
    train_fake = reconstructions(tokenizer, train_real)
    test_fake = reconstructions(tokenizer, test_real)

    torch.manual_seed(args.seed)  # the discriminator's initialisation
    discriminator = PatchDiscriminator(3, args.channels, args.layers)
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
    rows = [{"step": 0, **held_out_report(discriminator, test_real, test_fake)}]
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(train_real), (args.batch_size,), generator=draw)
        real_logits, fake_logits = discriminator(torch.cat([train_real[batch], train_fake[batch]])).chunk(2)
        loss = discriminator_loss(real_logits, fake_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            rows.append(
                {
                    "step": step,
                    "train_hinge": loss.item(),
                    **held_out_report(discriminator, test_real, test_fake),
                }
            )
            print(
                f"step {step:5d}  held-out hinge {rows[-1]['hinge']:.3f}  "
                f"pair accuracy {rows[-1]['pair_accuracy']:.3f}  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if args.out is not None:
        command = "python scripts/discriminator_probe.py " + " ".join(sys.argv[1:])
        result = {
            "command": command,
            **environment_record(),
            "arguments": vars(args) | {"out": str(args.out)},
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
