"""``openhart eval`` and ``openhart compare``: quality metrics and the speed comparison from the shell.

openhart eval --model runs/emoji-64/final --data /work/data/emoji-64 --num-images 1000 -o eval/hart
openhart eval --model runs/emoji-64/final --variant var --data /work/data/emoji-64 -o eval/var
openhart compare --models hart,var,diffusion@20,diffusion@50 --model hart-0.7b-1024 --device cuda

The commands live on ``evaluation_app`` (a typer sub-app, handy for tests) and as plain functions
``eval_command`` / ``compare_command`` for the main CLI to register (``app.command("eval")(eval_command)``).
"""

from __future__ import annotations

import json
import logging
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from openhart.command_setup import DeviceChoice, DtypeChoice, GuidanceOption, RandomWeightsOption
from openhart.error_boundary import ErrorBoundaryGroup
from openhart.errors import OpenHARTError, StorageError
from openhart.utils.config import atomic_write_bytes

logger = logging.getLogger(__name__)

evaluation_app = typer.Typer(
    cls=ErrorBoundaryGroup, add_completion=False, no_args_is_help=True, help="Evaluate and compare models."
)


class VariantChoice(str, Enum):
    auto = "auto"
    hart = "hart"
    var = "var"
    diffusion = "diffusion"


def _device_and_dtype(device: DeviceChoice, dtype: DtypeChoice):
    # Imported here: openhart.cli registers this module's commands while it is being imported.
    from openhart.command_setup import resolve_device, resolve_dtype

    torch_device = resolve_device(device.value)
    return torch_device, resolve_dtype(dtype.value, torch_device)


def eval_command(
    model: Annotated[
        str,
        typer.Option(
            help="Model folder (HART or latent diffusion), preset (its trained weights) or repo id."
        ),
    ],
    data: Annotated[Path, typer.Option(help="Image folder with metadata.jsonl (e.g. the emoji dataset).")],
    num_images: Annotated[int, typer.Option(min=2, help="Real and generated images for FID/KID/P/R.")] = 1000,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Folder for eval.json, eval.md, samples.png.")
    ] = None,
    variant: Annotated[
        VariantChoice,
        typer.Option(help="var: a HART model without its residual head (auto: what the model is)."),
    ] = VariantChoice.auto,
    split: Annotated[
        str, typer.Option(help="Rows for FID: a split name, 'all', or 'auto' (train if split).")
    ] = "auto",
    heldout_split: Annotated[
        str,
        typer.Option(
            help="Split whose concepts measure prompt adherence ('test': held-out concepts; 'train': in-domain)."
        ),
    ] = "test",
    adherence_images: Annotated[int, typer.Option(min=0, help="Held-out prompts (0 skips adherence).")] = 200,
    reference_images: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cap on real nearest-neighbour references, keeping every image of the queried concepts "
            "(default: all rows).",
        ),
    ] = None,
    reconstruction_images: Annotated[
        int | None, typer.Option(min=0, help="Rows for PSNR/SSIM/rFID (default: num-images; 0 skips).")
    ] = None,
    guidance_scale: GuidanceOption = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Residual-head or sampler steps.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    seed: Annotated[int, typer.Option(min=0, help="Row subsets; generated image i uses seed + i.")] = 0,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where real-image features are cached (default ~/.cache/openhart).")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not read or write cached features.")
    ] = False,
    device: Annotated[DeviceChoice, typer.Option()] = DeviceChoice.auto,
    dtype: Annotated[DtypeChoice, typer.Option()] = DtypeChoice.auto,
    random_weights: RandomWeightsOption = False,
) -> None:
    """FID, KID, precision/recall, prompt adherence and tokenizer reconstruction of one model."""
    from openhart.evaluation.evaluate import DEFAULT_CACHE_DIR, evaluate, results_markdown

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    torch_device, torch_dtype = _device_and_dtype(device, dtype)
    if not data.is_dir():
        raise StorageError(f"--data: no such folder: {data}")
    try:
        results = evaluate(
            model,
            data,
            num_images,
            variant=None if variant is VariantChoice.auto else variant.value,
            split=None if split == "all" else split,
            heldout_split=heldout_split,
            adherence_images=adherence_images,
            reference_images=reference_images,
            reconstruction_images=reconstruction_images,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            batch_size=batch_size,
            seed=seed,
            device=torch_device,
            dtype=torch_dtype,
            cache_dir=None if no_cache else (cache_dir or DEFAULT_CACHE_DIR),
            output_dir=output,
            random_weights=random_weights,
        )
    except OpenHARTError:
        raise  # typed: one line and its category's exit code at the CLI's error boundary
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(results_markdown(results))
    if output is not None:
        typer.echo(f"wrote {output / 'eval.json'}, {output / 'eval.md'}, {output / 'samples.png'}")


def compare_command(
    models: Annotated[
        str, typer.Option(help="Comma-separated: hart, var, diffusion, diffusion@STEPS.")
    ] = "hart,var,diffusion",
    model: Annotated[
        str, typer.Option(help="HART model folder or preset (presets: random weights).")
    ] = "tiny",
    diffusion_model: Annotated[
        str | None,
        typer.Option(help="LatentDiffusionPipeline folder (default: random weights sized for the preset)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch of the throughput run.")] = 16,
    guidance_scale: Annotated[float, typer.Option(min=0.0)] = 4.5,
    hart_steps: Annotated[int | None, typer.Option(min=1, help="Residual-head steps (default 8).")] = None,
    warmup: Annotated[int, typer.Option(min=0)] = 1,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    device: Annotated[DeviceChoice, typer.Option()] = DeviceChoice.auto,
    dtype: Annotated[DtypeChoice, typer.Option()] = DtypeChoice.auto,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Also write the table.")] = None,
) -> None:
    """Latency, throughput, MACs and peak memory of HART vs VAR-only vs latent diffusion, with ratios."""
    run_compare(
        models=models,
        model=model,
        diffusion_model=diffusion_model,
        batch_size=batch_size,
        guidance_scale=guidance_scale,
        hart_steps=hart_steps,
        warmup=warmup,
        repeats=repeats,
        seed=seed,
        device=device,
        dtype=dtype,
        json_out=json_out,
        markdown_out=markdown_out,
    )


def run_compare(
    *,
    models: str,
    model: str,
    diffusion_model: str | None = None,
    batch_size: int = 16,
    guidance_scale: float = 4.5,
    hart_steps: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    device: DeviceChoice | str = DeviceChoice.auto,
    dtype: DtypeChoice | str = DtypeChoice.auto,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
) -> None:
    """What ``compare`` does, callable from another command (e.g. ``openhart bench --compare``)."""
    from openhart.evaluation.compare import compare_pipelines, load_comparison_models
    from openhart.presets import PRESETS

    logging.basicConfig(level=logging.ERROR)
    # Speed does not depend on the weights: a preset is timed with random weights of its
    # architecture, and the diffusion baseline sized for it (offline, nothing downloaded).
    random_weights = model in PRESETS
    torch_device, torch_dtype = _device_and_dtype(DeviceChoice(device), DtypeChoice(dtype))
    try:
        hart, diffusion = load_comparison_models(
            model,
            diffusion_model,
            models,
            device=torch_device,
            dtype=torch_dtype,
            seed=seed,
            random_weights=random_weights,
        )
        comparison = compare_pipelines(
            hart,
            diffusion,
            models,
            throughput_batch_size=batch_size,
            guidance_scale=guidance_scale,
            hart_steps=hart_steps,
            warmup=warmup,
            repeats=repeats,
            seed=seed,
        )
    except OpenHARTError:
        raise
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error
    table = comparison.table()
    typer.echo(table)
    if json_out is not None:
        atomic_write_bytes(json_out, (json.dumps(comparison.to_dict(), indent=2) + "\n").encode())
        typer.echo(f"wrote {json_out}")
    if markdown_out is not None:
        atomic_write_bytes(markdown_out, (table + "\n").encode())
        typer.echo(f"wrote {markdown_out}")


evaluation_app.command("eval")(eval_command)
evaluation_app.command("compare")(compare_command)
