"""``openhart synthesize``: the command-line edge of dataset synthesis (options, errors, summary).

openhart synthesize --prompts prompts.txt --out data/synth --images-per-prompt 4
torchrun --nproc_per_node 2 -m openhart.synthesize --prompts prompts.jsonl --out data/synth

Register on the main app with ``app.command("synthesize")(synthesize)``; ``main()`` runs it alone
(``python -m openhart.synthesize``, what torchrun launches).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from openhart.command_setup import DtypeChoice, RandomWeightsOption, load_model, resolve_dtype
from openhart.error_boundary import ErrorBoundaryCommand
from openhart.loading import DEFAULT_MODEL
from openhart.synthesis.engine import (
    SynthesisError,
    SynthesisJob,
    describe_plan,
    load_job_inputs,
    plan_job,
    run_synthesis,
    threads_per_process,
)
from openhart.synthesis.prompts import PromptFileError
from openhart.synthesis.writers import OutputFolderError
from openhart.utils.distributed import (
    DEVICE_CHOICES,
    cleanup_distributed,
    init_distributed,
    setup_logging,
)

logger = logging.getLogger("openhart")

# Ranks can finish far apart (uneven shards, a resumed job); collectives wait this long for them.
PROCESS_GROUP_TIMEOUT = timedelta(hours=12)


class OutputFormat(str, Enum):
    folder = "folder"
    webdataset = "webdataset"


def synthesize(
    prompts: Annotated[
        Path, typer.Option("--prompts", help="Prompts: .txt (one a line) or .jsonl (objects).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (created; a rerun resumes it).")],
    model: Annotated[
        str | None, typer.Option(help="Model folder or preset name (default: the embedded model).")
    ] = None,
    images_per_prompt: Annotated[
        int, typer.Option(min=1, help="Images per prompt line (a JSONL 'num_images' overrides it).")
    ] = 1,
    batch_size: Annotated[
        int,
        typer.Option(min=1, help="Images per pipeline call (part of the result: see docs/synthesize.md)."),
    ] = 8,
    seed: Annotated[
        int, typer.Option(min=0, help="Job seed: image j of line L gets a seed from (seed, L, j).")
    ] = 0,
    output_format: Annotated[
        OutputFormat,
        typer.Option("--format", help="folder (images + metadata.jsonl) or webdataset (tar shards)."),
    ] = OutputFormat.folder,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Images per WebDataset shard (and per work unit).")
    ] = 1000,
    guidance_scale: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="CFG strength (default: the model's; a JSONL 'guidance_scale' overrides it).",
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Residual diffusion steps (default: the model's).")
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="Make only the plan's first N images.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    device: Annotated[
        str, typer.Option(help=f"One of {', '.join(DEVICE_CHOICES)}; torchrun: LOCAL_RANK's GPU.")
    ] = "auto",
    dtype: Annotated[
        DtypeChoice, typer.Option(help="Weights dtype (auto: bf16 on CUDA, fp32 elsewhere).")
    ] = DtypeChoice.auto,
    random_weights: RandomWeightsOption = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="CPU threads per process (default: cores / processes on this node)."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on rank 0.")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Generate an image dataset from a prompts file; resumable; parallel under torchrun."""
    if device not in DEVICE_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(DEVICE_CHOICES)}", param_hint="--device")
    try:
        ctx = init_distributed(device, timeout=PROCESS_GROUP_TIMEOUT)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--device") from error
    setup_logging(ctx.rank, verbose)
    try:
        job = SynthesisJob(
            prompts=prompts,
            out=out,
            model=model or DEFAULT_MODEL,
            images_per_prompt=images_per_prompt,
            batch_size=batch_size,
            seed=seed,
            output_format=output_format.value,
            shard_size=shard_size,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            max_images=max_images,
        )
        prompt_file, plan = load_job_inputs(job, report_bad_lines=ctx.is_main)
        if dry_run:
            if ctx.is_main:
                typer.echo("\n".join(describe_plan(job, prompt_file, plan, ctx.world_size)))
            return
        if ctx.device.type == "cpu":
            torch.set_num_threads(threads_per_process(threads))
            logger.info("%d CPU thread(s) per process", torch.get_num_threads())
        pipeline = load_model(
            model, ctx.device, resolve_dtype(dtype.value, ctx.device, model), random_weights=random_weights
        )
        # Record the model's defaults as the values used, in the metadata and the resume check.
        if steps is None:
            job = replace(job, num_inference_steps=pipeline.default_num_inference_steps)
        if guidance_scale is None:
            job = replace(job, guidance_scale=pipeline.default_guidance_scale)
            plan = plan_job(job, prompt_file)  # the same prompts; the items carry the guidance
        summary = run_synthesis(pipeline, job, prompt_file, plan, ctx, progress=progress)
    except (PromptFileError, SynthesisError, OutputFolderError) as error:
        prefix = "" if ctx.rank == 0 else f"[rank {ctx.rank}] "
        typer.echo(f"{prefix}Error: {' '.join(str(error).split())}", err=True)
        raise typer.Exit(error.exit_code) from error
    finally:
        cleanup_distributed()
    if summary is not None:
        for line in summary.lines():
            typer.echo(line)


def main() -> None:
    """Run ``synthesize`` as a program of its own (``python -m openhart.synthesize``)."""
    app = typer.Typer(add_completion=False)
    # The same error boundary as ``openhart``: typed errors are one line (OPENHART_DEBUG=1: traceback).
    app.command(cls=ErrorBoundaryCommand)(synthesize)
    app()
