"""One call (or ``openhart eval``) from a model and an image folder to a table of quality metrics.

One file on purpose: its functions are the steps of one measurement (data subset, real features, generated
features, metrics, report), read in order; apart they would be read out of order.

``evaluate(model, data, num_images)``:

1. load the model: a HartPipeline folder, a LatentDiffusionPipeline folder, a preset name
   (random weights, with a warning) or a pipeline object; ``variant="var"`` samples a HART model
   without its residual head (the VAR-only baseline);
2. pick ``num_images`` rows of the data split (a seeded subset), extract the real images'
   features (cached on disk, keyed by the data, the rows, the image size, the count and the
   feature network);
3. generate one image per picked caption (image i with seed + i) and extract their features;
4. FID, KID, precision/recall against the real rows; prompt adherence on the held-out concepts;
   the tokenizer's reconstruction (discrete-only vs hybrid) on the real rows;
5. return a dict and, with ``output_dir``, write ``eval.json``, ``eval.md`` and a sample grid.

The data is an image folder in the ``metadata.jsonl`` layout (:class:`~openhart.data.ImageFolderDataset`);
the optional row fields ``split`` and ``concept_id``/``concept`` drive the split choice and the
adherence metric (without a concept field, a row's caption is its concept).

Dimension legend: N real rows, M generated images, D feature width, B batch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from openhart.data.datasets import ImageFolderDataset, ImageRecord, load_image
from openhart.evaluation.adherence import adherence_references, concept_of, seeded_subset
from openhart.evaluation.metrics import (
    concept_accuracy,
    fid_from_features,
    kid_from_features,
    precision_recall,
    reconstruction_metrics,
)
from openhart.loading import load
from openhart.models import (
    LatentDiffusionPipeline,
    VarOnlyPipeline,
    var_only,
)
from openhart.models.hart import HartPipeline
from openhart.utils.config import atomic_write_bytes

logger = logging.getLogger(__name__)

VARIANTS = ("hart", "var", "diffusion")
DEFAULT_CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openhart" / "eval-features"
)
RESULT_JSON = "eval.json"
RESULT_MARKDOWN = "eval.md"
SAMPLE_GRID = "samples.png"

Pipeline = HartPipeline | VarOnlyPipeline | LatentDiffusionPipeline


# ---------------------------------------------------------------------- model
def load_for_evaluation(
    model: str | os.PathLike[str] | Pipeline,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    random_weights: bool = False,
) -> tuple[Pipeline, str]:
    """(pipeline, variant) from a pipeline object or any name :func:`openhart.load` takes.

    ``variant``: "hart", "var" (a HART model without the residual head) or "diffusion"; None
    picks what the model is. A preset means its trained weights; ``random_weights`` builds its
    architecture (or, with ``variant="diffusion"``, the matched baseline) with random weights.
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    if isinstance(model, (HartPipeline, VarOnlyPipeline, LatentDiffusionPipeline)):
        pipeline = model
    elif isinstance(model, (str, os.PathLike)):
        kind = {"diffusion": "diffusion", "hart": "hart", "var": "hart"}.get(variant or "", "auto")
        pipeline = load(
            model, device=device, dtype=dtype, kind=kind, random_weights=random_weights, seed=seed
        )
    else:
        raise TypeError(f"model: expected a folder, a preset name or a pipeline, got {type(model).__name__}")

    if isinstance(pipeline, LatentDiffusionPipeline):
        if variant not in (None, "diffusion"):
            raise ValueError(f"variant: {variant!r} asked for, but the model is a latent-diffusion pipeline")
        return pipeline, "diffusion"
    if isinstance(pipeline, VarOnlyPipeline):
        if variant not in (None, "var"):
            raise ValueError(f"variant: {variant!r} asked for, but the model is a VAR-only pipeline")
        return pipeline, "var"
    if variant == "diffusion":
        raise ValueError("variant: 'diffusion' needs a latent-diffusion folder (or a preset name)")
    if variant == "var":
        return var_only(pipeline), "var"
    return pipeline, "hart"


# ---------------------------------------------------------------------- data
def _resolve_data(data: str | os.PathLike[str] | dict) -> tuple[Path, str | None]:
    """(image folder, split) from a folder path or an ``{"type": "imagefolder", ...}`` spec."""
    if isinstance(data, dict):
        if data.get("type") != "imagefolder" or "root" not in data:
            raise ValueError(
                "data: evaluation reads an image folder: a path or {'type': 'imagefolder', 'root': ..., 'split': ...}"
            )
        return Path(data["root"]), data.get("split")
    if isinstance(data, (str, os.PathLike)):
        return Path(data), None
    raise TypeError(f"data: expected a folder path or a dataset spec dict, got {type(data).__name__}")


def _has_split_field(root: Path) -> bool:
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        return False
    with open(metadata, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                return "split" in json.loads(line)
    return False


def data_fingerprint(root: Path) -> str:
    """What identifies a dataset folder's contents for the feature cache: its path, metadata size and mtime."""
    metadata = root / "metadata.jsonl"
    stat = metadata.stat() if metadata.is_file() else root.stat()
    return f"{root.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


# ---------------------------------------------------------------------- features
def extractor_cache_id(extractor: nn.Module) -> str | None:
    """What identifies a feature network's outputs for the cache (None: do not cache)."""
    explicit = getattr(extractor, "cache_id", None)
    if explicit is not None:
        return str(explicit)
    from openhart.evaluation.inception import InceptionFeatureExtractor

    if isinstance(extractor, InceptionFeatureExtractor):
        size = Path(extractor.weights_path).stat().st_size
        return f"fid-inception-v3|{size}|{extractor.resize}|{extractor.quantize}"
    return None


def _extract_in_batches(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    make_batches: Callable[[], Any],
    total: int,
    description: str,
    progress: bool,
) -> torch.Tensor:
    features = []
    with tqdm(total=total, desc=description, disable=not progress, leave=False) as bar:
        for images in make_batches():
            features.append(extractor(images).float().cpu())
            bar.update(images.shape[0])
    return torch.cat(features)


def real_features(
    records: Sequence[ImageRecord],
    image_size: int,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    *,
    data_fingerprint: str,
    purpose: str,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Features (N, D) of the real images of ``records`` at ``image_size``, cached on disk.

    The cache file is keyed by the data's fingerprint (folder, metadata size and mtime), the
    purpose, the rows' keys, the image size, the count and the feature network
    (:func:`extractor_cache_id`); ``cache_dir=None`` or an unidentifiable network disables it.
    """
    cache_id = extractor_cache_id(extractor) if isinstance(extractor, nn.Module) else None
    path = None
    if cache_dir is not None and cache_id is not None:
        keys = "\n".join(record.key for record in records)
        digest = hashlib.sha256(
            f"{data_fingerprint}|{purpose}|{image_size}|{len(records)}|{cache_id}|{keys}".encode()
        ).hexdigest()[:24]
        path = Path(cache_dir) / f"{purpose}-{image_size}px-{len(records)}-{digest}.safetensors"
        if path.is_file():
            logger.info("real features from cache %s", path)
            return load_file(str(path))["features"]

    def batches():
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            images = torch.stack([load_image(record.path, image_size) for record in chunk])  # (B, 3, S, S)
            yield (images + 1) / 2

    features = _extract_in_batches(extractor, batches, len(records), f"real {purpose}", progress)
    if path is not None:
        atomic_write_bytes(path, save({"features": features.contiguous()}))
        logger.info("cached real features in %s", path)
    return features


def generate_features(
    pipeline: Pipeline,
    prompts: Sequence[str],
    extractor: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int = 0,
    batch_size: int = 16,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    generation_kwargs: dict[str, Any] | None = None,
    keep_images: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Generate one image per prompt (image i from seed + i) → (features (M, D), first
    ``keep_images`` images (K, 3, H, W) in [0, 1], generation seconds)."""
    kept: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    seconds = 0.0
    with tqdm(total=len(prompts), desc="generate", disable=not progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            began = time.perf_counter()
            images = pipeline(
                chunk,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                generator=generators,
                output_type="pt",
                **(generation_kwargs or {}),
            ).images  # (B, 3, H, W) in [0, 1] on the CPU
            seconds += time.perf_counter() - began
            features.append(extractor(images).float().cpu())
            if sum(x.shape[0] for x in kept) < keep_images:
                kept.append(images[: keep_images - sum(x.shape[0] for x in kept)])
            bar.update(len(chunk))
    kept_images = torch.cat(kept) if kept else torch.zeros(0)
    return torch.cat(features), kept_images, seconds


def _used_sampler_settings(
    pipeline: Pipeline, guidance_scale: float, num_inference_steps: int | None
) -> dict[str, Any] | None:
    """The sampler settings the generated images were drawn with (None for the diffusion baseline)."""
    settings = getattr(pipeline, "sampler_settings", None)
    if settings is None:
        return None
    steps = num_inference_steps if num_inference_steps is not None else settings.num_inference_steps
    return settings.replace(guidance_scale=guidance_scale, num_inference_steps=steps).to_dict()


# ---------------------------------------------------------------------- the evaluation
def evaluate(
    model: str | os.PathLike[str] | Pipeline,
    data: str | os.PathLike[str] | dict,
    num_images: int = 1000,
    *,
    variant: str | None = None,
    split: str | None = "auto",
    heldout_split: str | None = "test",
    adherence_images: int = 200,
    reference_images: int | None = None,
    reconstruction_images: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    generation_kwargs: dict[str, Any] | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    extractor: nn.Module | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    output_dir: str | os.PathLike[str] | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: bool = True,
    random_weights: bool = False,
) -> dict[str, Any]:
    """Quality metrics of a model on an image folder; see the module docstring for the steps.

    Args:
        model: a pipeline or any name :func:`openhart.load` takes (a preset means its trained
            weights; ``random_weights`` its architecture with random weights).
        data: an image folder (``metadata.jsonl`` layout) or ``{"type": "imagefolder", "root", "split"}``.
        num_images: N real rows and N generated images for FID / KID / precision / recall.
        variant: "hart", "var" or "diffusion" (None: what the model is).
        split: the rows FID uses: a split name, None for all rows, "auto" for "train" when the
            metadata has a split field (else all rows).
        heldout_split: prompt adherence generates for rows of this split (None or absent: skipped).
        adherence_images: at most this many held-out rows (one image each).
        reference_images: at most this many real rows as nearest-neighbour references (all
            held-out rows are always included, or only those of the queried concepts when the
            split alone is larger; None: every row of the folder). See :func:`adherence_references`.
        reconstruction_images: real rows for PSNR / SSIM / rFID (default N; 0 skips).
        guidance_scale, num_inference_steps, generation_kwargs: handed to the pipeline call
            (guidance None: the model's own, which the results record).
        batch_size: images per generation / feature batch. seed: row subsets and image seeds.
        device, dtype: where a loaded model runs. extractor: the feature network (default: the
            standard FID Inception on ``device``). cache_dir: where real features are cached
            (None: no cache). output_dir: write eval.json, eval.md and samples.png there.
        kid_subsets, kid_subset_size: KID's subsets (the size is capped at N).
        progress: progress bars.
        random_weights: see ``model``.
    """
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 2:
        raise ValueError(f"num_images must be an int ≥ 2 (FID needs two samples), got {num_images!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r}")
    started = time.perf_counter()
    pipeline, variant = load_for_evaluation(
        model, variant, device=device, dtype=dtype, seed=seed, random_weights=random_weights
    )
    if guidance_scale is None:  # the model's own default, resolved here so the results can say it
        guidance_scale = float(pipeline.default_guidance_scale)
    if extractor is None:
        from openhart.evaluation.inception import InceptionFeatureExtractor

        extractor = InceptionFeatureExtractor().to(pipeline.device)
    image_size = pipeline.image_size
    root, spec_split = _resolve_data(data)
    if spec_split is not None:
        split = spec_split
    if split == "auto":
        split = "train" if _has_split_field(root) else None
    everything = ImageFolderDataset(root, image_size)
    rows = [r for r in everything.records if split is None or r.extra.get("split") == split]
    if len(rows) < 2:
        raise ValueError(f"data: {root} has {len(rows)} usable rows in split {split!r}; need at least 2")
    if num_images > len(rows):
        logger.warning(
            "num_images=%d > %d rows of split %r: using %d", num_images, len(rows), split, len(rows)
        )
    fid_rows = seeded_subset(rows, num_images, seed, stream=0)
    fingerprint = data_fingerprint(root)
    feature_options = {
        "image_size": image_size,
        "extractor": extractor,
        "data_fingerprint": fingerprint,
        "cache_dir": cache_dir,
        "batch_size": batch_size,
        "progress": progress,
    }
    generation_options = {
        "seed": seed,
        "batch_size": batch_size,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "generation_kwargs": generation_kwargs,
        "progress": progress,
    }

    # Distribution metrics: N real rows vs one generated image per caption of those rows.
    real = real_features(fid_rows, purpose=f"fid-{split or 'all'}-seed{seed}", **feature_options)
    fake, samples, generation_seconds = generate_features(
        pipeline, [r.caption for r in fid_rows], extractor, keep_images=16, **generation_options
    )
    kid_mean, kid_std = kid_from_features(
        real, fake, kid_subsets, kid_subset_size, generator=torch.Generator().manual_seed(seed)
    )
    k = min(3, len(fid_rows) - 1)
    results: dict[str, Any] = {
        "model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
        "variant": variant,
        "data": str(root),
        "split": split,
        "num_images": len(fid_rows),
        "image_size": image_size,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        # The rest of how tokens were drawn (temperature, top-k, ...): the model's own settings.
        "sampler": _used_sampler_settings(pipeline, guidance_scale, num_inference_steps),
        "seed": seed,
        "feature_extractor": extractor_cache_id(extractor) or type(extractor).__name__,
        "fid": fid_from_features(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **precision_recall(real, fake, k=k),
        "precision_recall_k": k,
    }

    # Prompt adherence: held-out concepts vs real images of all concepts.
    heldout = [
        r for r in everything.records if heldout_split is not None and r.extra.get("split") == heldout_split
    ]
    if heldout and adherence_images > 0:
        results["adherence"] = _adherence(
            pipeline,
            everything.records,
            heldout,
            adherence_images,
            reference_images,
            feature_options,
            {**generation_options, "seed": seed + 1_000_000},  # other seeds than the FID images
        )
        results["adherence"]["split"] = heldout_split
    else:
        logger.info("no rows of split %r: prompt adherence skipped", heldout_split)

    # Reconstruction of the tokenizer: discrete-only vs hybrid.
    count = len(fid_rows) if reconstruction_images is None else min(reconstruction_images, len(fid_rows))
    if count >= 2:
        images = torch.stack([load_image(r.path, image_size) for r in fid_rows[:count]])  # (N, 3, S, S)
        results["reconstruction"] = reconstruction_metrics(
            pipeline.tokenizer,
            images,
            batch_size=batch_size,
            extractor=extractor,
            real_features=real[:count],  # the same rows, in the same order
        )

    total = time.perf_counter() - started
    results["timing"] = {
        "generation_seconds": generation_seconds,
        "seconds_per_generated_image": generation_seconds / len(fid_rows),
        "total_seconds": total,
    }
    results["environment"] = {
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(pipeline.device)
        if pipeline.device.type == "cuda"
        else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if output_dir is not None:
        write_results(results, output_dir, samples)
    return results


def _adherence(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    heldout: Sequence[ImageRecord],
    adherence_images: int,
    reference_images: int | None,
    feature_options: dict[str, Any],
    generation_options: dict[str, Any],
) -> dict[str, float]:
    seed = generation_options["seed"]
    queries = seeded_subset(heldout, adherence_images, seed, stream=1)
    references = adherence_references(records, heldout, queries, reference_images, seed)
    reference_features = real_features(references, purpose=f"references-seed{seed}", **feature_options)
    reference_concepts = [concept_of(r) for r in references]
    query_concepts = [concept_of(r) for r in queries]
    generated, _, _ = generate_features(
        pipeline, [r.caption for r in queries], feature_options["extractor"], **generation_options
    )
    result = concept_accuracy(generated, query_concepts, reference_features, reference_concepts)
    # The same measure for the real held-out images (each hidden from its own search): what a
    # model that draws like the data would score, given this feature space.
    position = {r.key: i for i, r in enumerate(references)}
    exclude = [position[r.key] for r in queries]
    real_queries = reference_features[exclude]
    reference = concept_accuracy(
        real_queries, query_concepts, reference_features, reference_concepts, exclude=exclude
    )
    result["real_top1"] = reference["top1"]
    result["real_top5"] = reference["top5"]
    result["num_references"] = len(references)
    return result


# ---------------------------------------------------------------------- output
def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _format(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.{digits}g}"
    return str(value)


def results_markdown(results: dict[str, Any]) -> str:
    """A Markdown report: the metric table, reconstruction, adherence, and how it was produced."""
    env = results.get("environment", {})
    lines = [
        f"## Evaluation: {results['model']} ({results['variant']})",
        "",
        f"{results['num_images']} generated vs {results['num_images']} real images of {results['data']} "
        f"(split {results['split']}), {results['image_size']} px, guidance {results['guidance_scale']}, "
        f"steps {results['num_inference_steps'] or 'default'}, seed {results['seed']}; features: "
        f"{results['feature_extractor']}.",
        "",
        "| FID | KID (×1e3) | precision | recall | s / image |",
        "|---|---|---|---|---|",
        f"| {_format(results['fid'])} | {_format(1e3 * results['kid_mean'])} ± {_format(1e3 * results['kid_std'], 2)} "
        f"| {_format(results['precision'], 3)} | {_format(results['recall'], 3)} "
        f"| {_format(results['timing']['seconds_per_generated_image'], 3)} |",
    ]
    adherence = results.get("adherence")
    if adherence:
        lines += [
            "",
            f"Prompt adherence on {adherence['num_queries']} prompts of the {adherence.get('split', 'test')!r} "
            f"split, nearest real image among {adherence.get('num_references', '?')} images of "
            f"{adherence['num_concepts']} concepts:",
            "",
            "| | top-1 | top-5 |",
            "|---|---|---|",
            f"| generated | {_format(adherence['top1'], 3)} | {_format(adherence['top5'], 3)} |",
            f"| real images of those prompts | {_format(adherence['real_top1'], 3)} | {_format(adherence['real_top5'], 3)} |",
            f"| chance | {_format(adherence['chance_top1'], 3)} | {_format(adherence['chance_top5'], 3)} |",
        ]
    reconstruction = results.get("reconstruction")
    if reconstruction:
        lines += [
            "",
            "Tokenizer reconstruction:",
            "",
            "| latent | PSNR (dB) | SSIM | rFID |",
            "|---|---|---|---|",
        ]
        for mode, values in reconstruction.items():
            lines.append(
                f"| {mode} | {_format(values['psnr'])} | {_format(values['ssim'], 3)} | {_format(values.get('rfid', math.nan))} |"
            )
    lines += [
        "",
        f"Measured {env.get('date', '')} on {env.get('cuda_device') or env.get('processor', '')} "
        f"({env.get('device', '')}, {env.get('dtype', '')}, torch {env.get('torch', '')}); "
        f"total {results['timing']['total_seconds']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def write_results(
    results: dict[str, Any], output_dir: str | os.PathLike[str], samples: torch.Tensor | None = None
) -> None:
    """Write eval.json, eval.md and (with ``samples`` (K, 3, H, W) in [0, 1]) samples.png to ``output_dir``."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / RESULT_JSON, (json.dumps(_json_safe(results), indent=2) + "\n").encode())
    atomic_write_bytes(folder / RESULT_MARKDOWN, results_markdown(results).encode())
    if samples is not None and samples.numel():
        import io

        import numpy as np
        from PIL import Image

        count = samples.shape[0]
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        _, _, height, width = samples.shape
        grid = torch.ones(3, rows * height, columns * width)
        for i in range(count):
            r, c = divmod(i, columns)
            grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = samples[i]
        array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        atomic_write_bytes(folder / SAMPLE_GRID, buffer.getvalue())
