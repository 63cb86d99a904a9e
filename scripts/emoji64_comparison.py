"""HART vs VAR-only vs latent diffusion on emoji-64: quality, speed, a plot and sample grids.

    python scripts/emoji64_comparison.py --hart runs/emoji-64-generator/final \
        --var runs/emoji-64-var/final --diffusion runs/emoji-64-diffusion/final \
        --data data/emoji-64 --out docs/results

``--var`` is the VAR-only model trained by configs/emoji-64-generator-var.yaml; without it,
VAR-only is the HART model sampled without its residual head. ``--only hart,diffusion`` evaluates
a subset (e.g. while another model still trains); an existing ``OUT/eval-NAME/eval.json`` is
reused unless ``--fresh``, so a later full run only adds what is missing.

Runs, on one device, in one process:
1. ``evaluate`` (FID, KID, precision/recall, prompt adherence; tokenizer reconstruction once, with
   HART) for ``hart``, ``var`` (sampled without a residual head) and ``diffusion`` (20
   DPM-Solver++ steps), same real rows, prompts and seeds;
2. ``compare_pipelines`` for hart, var, diffusion@20, diffusion@50 (latency, throughput, MACs, memory);
3. ``emoji64-quality-vs-latency.png`` (FID against batch-1 latency, matplotlib) and
   ``emoji64-samples.png`` (rows: the three models; columns: held-out prompts, seed i per column);
4. ``emoji64-comparison.json`` (every number, the settings, machine, date, wall times) and
   ``emoji64-comparison.md`` (the two tables, for the README).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from openhart import HartPipeline
from openhart.data.emoji import heldout_prompts
from openhart.evaluation.compare import compare_pipelines
from openhart.evaluation.evaluate import evaluate
from openhart.models import LatentDiffusionPipeline, var_only
from openhart.utils.images import pil_grid

MODELS = ("hart", "var", "diffusion")


def sample_grid(pipelines: dict, prompts: list[str], scale: int = 2) -> Image.Image:
    """Rows = models (labelled), columns = prompts; column i uses seed i for every model."""
    rows = []
    for name, pipe in pipelines.items():
        generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
        images = pipe(prompts, generator=generators).images
        grid = pil_grid(images, columns=len(images))
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
        label = Image.new("RGB", (110, grid.height), "white")
        ImageDraw.Draw(label).text((6, grid.height // 2 - 6), name, fill="black")
        row = Image.new("RGB", (label.width + grid.width, grid.height), "white")
        row.paste(label, (0, 0))
        row.paste(grid, (label.width, 0))
        rows.append(row)
    out = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for index, row in enumerate(rows):
        out.paste(row, (0, index * row.height))
    return out


def plot_quality_vs_latency(points: list[tuple[str, float, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4), dpi=120)
    for name, latency_ms, fid in points:
        axis.scatter(latency_ms, fid, s=40)
        axis.annotate(name, (latency_ms, fid), textcoords="offset points", xytext=(6, 4))
    axis.set_xscale("log")
    axis.margins(x=0.3, y=0.15)  # room for the labels
    axis.set_xlabel("batch-1 latency (ms, log scale)")
    axis.set_ylabel("FID (lower is better)")
    axis.set_title(title, fontsize=9)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def markdown(report: dict) -> str:
    quality = report["quality"]
    lines = [
        "| model | FID ↓ | KID ×10³ ↓ | precision ↑ | recall ↑ | adherence top-1 / top-5 ↑ |",
        "|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        q = quality[name]
        adherence = q.get("adherence") or {}
        lines.append(
            f"| {name} | {q['fid']:.1f} | {1e3 * q['kid_mean']:.1f} ± {1e3 * q['kid_std']:.1f} | "
            f"{q['precision']:.3f} | {q['recall']:.3f} | "
            f"{100 * adherence.get('top1', float('nan')):.1f}% / {100 * adherence.get('top5', float('nan')):.1f}% |"
        )
    adherence = quality["hart"].get("adherence") or {}
    if adherence:
        lines.append(
            f"| real held-out images | | | | | {100 * adherence.get('real_top1', float('nan')):.1f}% / "
            f"{100 * adherence.get('real_top5', float('nan')):.1f}% (chance {100 * adherence.get('chance_top1', float('nan')):.2f}%) |"
        )
    recon = quality["hart"].get("reconstruction") or {}
    if recon:
        lines += [
            "",
            "| tokenizer reconstruction | PSNR (dB) ↑ | SSIM ↑ | rFID ↓ |",
            "|---|---|---|---|",
        ]
        for kind in ("discrete", "hybrid"):
            r = recon[kind]
            lines.append(f"| {kind} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['rfid']:.1f} |")
    speed = report["speed"]
    lines += [
        "",
        "| model | steps | latency b=1 | images/s b=16 | GMACs / image | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    reference = next(m for m in speed["models"] if m["name"] == "hart")
    for m in speed["models"]:
        lines.append(
            f"| {m['name']} | {m['num_inference_steps']} | {1e3 * m['latency_seconds']:.1f} ms "
            f"({m['latency_seconds'] / reference['latency_seconds']:.2f}x) | "
            f"{m['throughput_images_per_second']:.1f} ({m['throughput_images_per_second'] / reference['throughput_images_per_second']:.2f}x) | "
            f"{m['macs_per_image'] / 1e9:.3f} | {m['peak_memory_bytes'] / 2**20:.0f} MiB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hart", type=Path, required=True, help="HartPipeline folder")
    parser.add_argument("--diffusion", type=Path, required=True, help="LatentDiffusionPipeline folder")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--adherence-images", type=int, default=200)
    parser.add_argument("--reference-images", type=int, default=2000)
    parser.add_argument("--diffusion-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--var", type=Path, default=None, help="trained VAR-only HartPipeline folder")
    parser.add_argument(
        "--only", default=None, help="evaluate these models only (comma list), no speed/plots"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="re-evaluate even where OUT/eval-NAME/eval.json exists"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hart = HartPipeline.from_pretrained(args.hart)
    diffusion = LatentDiffusionPipeline.from_pretrained(args.diffusion)
    var = var_only(HartPipeline.from_pretrained(args.var) if args.var is not None else hart)
    pipelines = {"hart": hart, "var": var, "diffusion": diffusion}
    selected = MODELS if args.only is None else tuple(args.only.split(","))

    quality, wall = {}, {}
    for name, pipe in pipelines.items():
        saved = args.out / f"eval-{name}" / "eval.json"
        if name not in selected:
            continue
        if saved.is_file() and not args.fresh:
            quality[name] = json.loads(saved.read_text())
            print(f"{name}: reusing {saved}", flush=True)
            continue
        begun = time.perf_counter()
        quality[name] = evaluate(
            pipe,
            args.data,
            num_images=args.num_images,
            variant=name,
            adherence_images=args.adherence_images,
            reference_images=args.reference_images,
            reconstruction_images=None if name == "hart" else 0,  # the tokenizer is shared: once
            num_inference_steps=args.diffusion_steps if name == "diffusion" else None,
            output_dir=args.out / f"eval-{name}",
        )
        wall[f"eval_{name}_seconds"] = time.perf_counter() - begun
        print(f"{name}: FID {quality[name]['fid']:.2f} ({wall[f'eval_{name}_seconds']:.0f} s)", flush=True)
    if args.only is not None:
        return

    begun = time.perf_counter()
    speed = compare_pipelines(
        hart,
        diffusion,
        f"hart,var,diffusion@{args.diffusion_steps},diffusion@50",
        throughput_batch_size=16,
        repeats=args.repeats,
    )
    wall["compare_seconds"] = time.perf_counter() - begun
    print(speed.table(), flush=True)

    prompts = heldout_prompts(args.data, 8)
    sample_grid(
        {"HART": hart, "VAR-only": pipelines["var"], f"diffusion@{args.diffusion_steps}": diffusion}, prompts
    ).save(args.out / "emoji64-samples.png")
    latency = {m.name: m.latency_seconds for m in speed.models}
    points = [
        ("HART", 1e3 * latency["hart"], quality["hart"]["fid"]),
        ("VAR-only", 1e3 * latency["var"], quality["var"]["fid"]),
        (
            f"diffusion@{args.diffusion_steps}",
            1e3 * latency[f"diffusion@{args.diffusion_steps}"],
            quality["diffusion"]["fid"],
        ),
    ]
    plot_quality_vs_latency(
        points,
        args.out / "emoji64-quality-vs-latency.png",
        f"emoji-64, {args.num_images} images, {speed.device} ({platform.processor() or platform.machine()})",
    )
    wall["total_seconds"] = time.perf_counter() - started
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "models": {
            "hart": str(args.hart),
            "var": str(args.var) if args.var is not None else f"{args.hart} without the residual head",
            "diffusion": str(args.diffusion),
        },
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "sample_prompts": prompts,
        "quality": quality,
        "speed": speed.to_dict(),
        "wall_seconds": wall,
    }
    (args.out / "emoji64-comparison.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "emoji64-comparison.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wall time {wall['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
