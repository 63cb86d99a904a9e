"""Does the residual head add detail? Teacher-forced on real held-out images, per residual temperature.

FID of generated images mixes two things: how good the tokens are and what the head adds to them.
This isolates the head. For each real image: the tokenizer's ids of every scale; the transformer,
teacher-forced on the true coarser scales and the image's own caption, samples its last-scale
tokens as at generation time; then the image is decoded five ways and compared with the original
(PSNR, SSIM, rFID against the same real images):

- ``true_discrete``: the true ids of every scale, no residual (what VAR could reach at best);
- ``true_hybrid``: the true ids and the true residual (the tokenizer's hybrid reconstruction);
- ``sampled_discrete``: the true coarser ids and the sampled last-scale ids, no residual (VAR-only
  sampling's last step, teacher-forced);
- ``sampled_head@T``: the same plus the head's residual at residual temperature T (HART's last step);
- ``sampled_oracle``: the same ids plus the exact residual they leave (the head's ceiling).

In the latent, ``explained`` is 1 − E‖r̂ − r‖² / E‖r‖² for the residual r the sampled ids leave:
above 0 the head's residual moves the latent towards the image; a perfect *sampler* of an
unpredictable residual scores below 0 at T = 1, so read it with rFID, which rewards the right
distribution rather than the mean.

    python scripts/residual_detail.py --model openhart/weights/emoji-64 --data data/emoji-64 \\
        --split test --num-images 800 --residual-temperature 0 0.5 1 --out residual-detail.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import openhart
from openhart.data.image_folder import ImageFolderDataset
from openhart.evaluation.inception import InceptionFeatureExtractor
from openhart.evaluation.metrics import fid_from_features, psnr, ssim
from openhart.models.hart import HartPipeline
from openhart.sampling import residual_rows_to_latent
from openhart.utils.config import atomic_write_bytes
from openhart.utils.random import sample_categorical


@torch.no_grad()
def decoded_variants(
    pipeline: HartPipeline,
    images: torch.Tensor,
    prompts: list[str],
    temperatures: list[float],
    token_temperature: float,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Decoded images in [0, 1] per variant for a batch (B, 3, S, S) in [−1, 1], and latent errors.

    Returns ({variant: (B, 3, S, S)}, {"residual_energy": Σ‖r‖², "error@T": Σ‖r̂ − r‖²}).
    """
    tokenizer, transformer, head = pipeline.tokenizer, pipeline.transformer, pipeline.diffusion_head
    quantize = tokenizer.quantize
    latent = tokenizer.encode(images)  # (B, Cz, P, P): the continuous latent f
    ids, true_residual = tokenizer.split(latent)
    context, mask = pipeline.encode_prompt(prompts)
    out = transformer(context, mask, quantize.teacher_forcing_inputs(ids))
    last_logits = out.logits[:, -ids[-1].shape[1] :].float()  # (B, l, V)
    probs = (last_logits / token_temperature).softmax(dim=-1) if token_temperature > 0 else None
    sampled = (
        sample_categorical(probs, generator) if probs is not None else last_logits.argmax(dim=-1)
    )  # (B, l)
    sampled_ids = [*ids[:-1], sampled]
    discrete = tokenizer.compose(sampled_ids)  # (B, Cz, P, P)
    residual = latent - discrete  # the residual the sampled ids leave
    token_latents = F.embedding(sampled, quantize.embedding.weight)  # (B, l, Cz)
    condition = transformer.diffusion_condition(out.last_scale_hidden, token_latents)
    rows = condition.reshape(-1, condition.shape[-1])  # (B·l, C)
    side = latent.shape[-1]

    latents = {
        "true_discrete": tokenizer.compose(ids),
        "true_hybrid": tokenizer.compose(ids, true_residual),
        "sampled_discrete": discrete,
        "sampled_oracle": latent,
    }
    errors = {"residual_energy": float(residual.double().pow(2).sum())}
    for temperature in temperatures:
        predicted = residual_rows_to_latent(
            head.sample(rows, temperature=temperature, generator=generator), images.shape[0], side
        ).to(latent.dtype)
        latents[f"sampled_head@{temperature:g}"] = discrete + predicted
        errors[f"error@{temperature:g}"] = float((predicted - residual).double().pow(2).sum())
    decoded = {name: ((tokenizer.decode(z).float() + 1) / 2).clamp(0, 1) for name, z in latents.items()}
    return decoded, errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a HART model folder or preset")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-images", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--residual-temperature", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument(
        "--token-temperature",
        type=float,
        default=None,
        help="last-scale token temperature (default: the model's sampler setting; 0 = argmax)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    pipeline = openhart.load(args.model, device="cpu", dtype=torch.float32)
    if not isinstance(pipeline, HartPipeline):
        raise SystemExit(f"{args.model}: not a HART model")
    token_temperature = (
        float(pipeline.sampler_settings.temperature)
        if args.token_temperature is None
        else args.token_temperature
    )
    dataset = ImageFolderDataset(args.data, pipeline.tokenizer.config.image_size, split=args.split)
    records = list(dataset.records)[: args.num_images]
    extractor = InceptionFeatureExtractor().eval()
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    real_features, features, psnrs, ssims = [], {}, {}, {}
    errors: dict[str, float] = {}
    for start in range(0, len(records), args.batch_size):
        chunk = list(range(start, min(start + args.batch_size, len(records))))
        images = torch.stack([dataset[i]["image"] for i in chunk])  # (B, 3, S, S) in [-1, 1]
        originals = ((images + 1) / 2).clamp(0, 1)
        real_features.append(extractor(originals))
        decoded, batch_errors = decoded_variants(
            pipeline,
            images,
            [records[i].caption for i in chunk],
            args.residual_temperature,
            token_temperature,
            generator,
        )
        for name, value in batch_errors.items():
            errors[name] = errors.get(name, 0.0) + value
        for name, pixels in decoded.items():
            psnrs.setdefault(name, []).append(psnr(pixels, originals))
            ssims.setdefault(name, []).append(ssim(pixels, originals))
            features.setdefault(name, []).append(extractor(pixels))
    real = torch.cat(real_features)
    rows = []
    for name in features:
        row = {
            "variant": name,
            "psnr": float(torch.cat(psnrs[name]).mean()),
            "ssim": float(torch.cat(ssims[name]).mean()),
            "rfid": fid_from_features(real, torch.cat(features[name])),
        }
        if name.startswith("sampled_head@"):
            temperature = name.partition("@")[2]
            row["explained"] = 1 - errors[f"error@{temperature}"] / errors["residual_energy"]
        rows.append(row)
        extra = f", explained {row['explained']:.3f}" if "explained" in row else ""
        print(
            f"{name}: PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.3f}, rFID {row['rfid']:.1f}{extra}",
            flush=True,
        )
    report = {
        "model": args.model,
        "data": str(args.data),
        "split": args.split,
        "num_images": len(records),
        "token_temperature": token_temperature,
        "seed": args.seed,
        "rows": rows,
        "seconds": time.perf_counter() - started,
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "command": "python scripts/residual_detail.py "
        + f"--model {args.model} --data {args.data} --split {args.split} --num-images {args.num_images} "
        + "--residual-temperature "
        + " ".join(f"{t:g}" for t in args.residual_temperature),
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
