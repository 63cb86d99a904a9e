"""``openhart train lora``: fine-tune LoRA adapters on a trained model from a folder of captioned images.

    openhart train lora --model emoji-64 --data my-images --out runs/my-lora --max-steps 300
    openhart generate "sks cat emoji" --model emoji-64 --lora runs/my-lora -o cat.png

``--data`` is a folder of images with same-name ``.txt`` captions (or a ``metadata.jsonl``), or
WebDataset shards. Every recipe field (``openhart.training.lora_recipe``) can come from
``--config FILE`` or ``--set a.b=VALUE``; the flags below win over both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from openhart.errors import ConfigError, InvalidInputError
from openhart.lora_cli import one_line_errors
from openhart.training.checkpoint import CheckpointError
from openhart.training.lora_recipe import data_spec, load_lora_recipe
from openhart.training.recipe import PRECISIONS, RecipeError
from openhart.utils.distributed import cleanup_distributed, init_distributed, setup_logging

logger = logging.getLogger("openhart.training")


def train_lora(
    model: Annotated[
        str | None, typer.Option("--model", help="Base model: folder, preset or shipped name, repo id.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Folder of images + same-name .txt captions (or metadata.jsonl), or shards."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder (adapter in OUT/final).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Optimiser steps.")] = None,
    trigger: Annotated[
        str | None, typer.Option("--trigger", help="Word prepended to every caption (use it in prompts).")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", min=1, help="LoRA rank r (default 8).")] = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", min=0.0, help="LoRA alpha; updates scale by alpha / r.")
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="Comma-separated groups (attention, mlp, adaln, diffusion_head) or module-path regexes.",
        ),
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per step.")] = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute activations: less memory, slower.")
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help=f"One of {PRECISIONS} (auto: bf16 autocast where native: CUDA, AMX or AVX512-BF16 CPUs).",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps.")] = None,
    sample_every: Annotated[
        int | None,
        typer.Option("--sample-every", min=0, help="Steps between base-vs-adapted grids (0: never)."),
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option("--checkpoint-every", min=0, help="Steps between checkpoints.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML LoRA recipe.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe field, e.g. --set lora.dropout=0.1.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")] = False,
    stop_at_step: Annotated[
        int | None, typer.Option("--stop-at-step", min=1, help="Stop (with a checkpoint) at this step.")
    ] = None,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", min=1.0, help="Stop (with a checkpoint) after N seconds.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Fine-tune LoRA adapters (PEFT) on a trained model; the base weights stay untouched."""
    values: dict[str, Any] = {
        "model": model,
        "data.train": data_spec(data) if data is not None else None,
        "run.out_dir": str(out) if out is not None else None,
        "optim.max_steps": max_steps,
        "trigger": trigger,
        "lora.rank": rank,
        "lora.alpha": alpha,
        "lora.targets": [t.strip() for t in targets.split(",") if t.strip()] if targets is not None else None,
        "optim.lr": lr,
        "data.batch_size": batch_size,
        "gradient_checkpointing": True if gradient_checkpointing else None,
        "run.precision": precision,
        "run.device": device,
        "run.sample_every": sample_every,
        "run.checkpoint_every": checkpoint_every,
    }
    with one_line_errors():
        try:
            recipe = load_lora_recipe(
                config, list(set_ or []), {k: v for k, v in values.items() if v is not None}
            )
        except RecipeError as error:
            raise ConfigError(str(error)) from error
        ctx = init_distributed(recipe.run.device)
        setup_logging(ctx.rank, verbose)
        from openhart.training.lora_trainer import LoraTrainer

        try:
            try:
                trainer = LoraTrainer(recipe, resume=resume, ctx=ctx)
            except (FileExistsError, CheckpointError) as error:
                raise InvalidInputError(str(error)) from error
            logger.info("training LoRA on %s (%s), out_dir %s", recipe.model, ctx.device, trainer.out_dir)
            result = trainer.train(stop_at_step=stop_at_step, time_limit_s=time_limit)
            if ctx.is_main:
                if result.finished:
                    typer.echo(
                        f"LoRA training finished at step {result.steps}; adapter: {result.model_dir} "
                        f"(openhart generate PROMPT --model {recipe.model} --lora {trainer.out_dir})"
                    )
                else:
                    typer.echo(f"LoRA training stopped at step {result.steps}; continue with --resume")
        finally:
            cleanup_distributed()
