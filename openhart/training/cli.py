"""``openhart train tokenizer|generator|diffusion --config RECIPE.yaml``: the training commands.

Register in the main CLI with ``app.add_typer(train_app, name="train")``. The same commands run
without the main CLI (``python -m openhart.training.cli tokenizer --config ...``), which is the
form ``torchrun`` launches::

    torchrun --nproc_per_node 2 -m openhart.training.cli tokenizer --config configs/tiny-tokenizer.yaml

``lora`` (``openhart.training.lora_cli``) fine-tunes adapters from flags: ``--model BASE --data
FOLDER --out DIR --max-steps N``.

Each other command: ``--config PATH [--resume] [--out DIR] [--set KEY=VALUE ...] [--max-steps N]
[--batch-size N] [--device D] [--stop-at-step N] [--time-limit SECONDS]``. A third command,
``text-features --config GENERATOR_RECIPE --out FILE``, precomputes the recipe's text features.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from openhart.error_boundary import ErrorBoundaryGroup
from openhart.errors import ConfigError, InvalidInputError, OpenHARTError, StorageError
from openhart.training.recipe import DEVICES, Recipe, RecipeError, load_recipe
from openhart.utils.distributed import cleanup_distributed, init_distributed, setup_logging

train_app = typer.Typer(
    cls=ErrorBoundaryGroup,  # run alone (torchrun -m, tests) it keeps the one-line errors
    add_completion=False,
    no_args_is_help=True,
    help="Train the hybrid tokenizer or the generator (transformer + residual head) from a YAML recipe.",
)
logger = logging.getLogger("openhart.training")

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="YAML recipe (see configs/).", exists=False, dir_okay=False)
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from the newest checkpoint in the output folder.")
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Output folder (default: the recipe's run.out_dir).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a recipe field, e.g. --set optim.lr=1e-4 (repeatable; YAML values)."
    ),
]
MaxStepsOption = Annotated[
    int | None, typer.Option("--max-steps", min=1, help="Shortcut for --set optim.max_steps=N.")
]
BatchOption = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Shortcut for --set data.batch_size=N (per process)."),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help=f"Shortcut for --set run.device=D {DEVICES}.")
]
StopOption = Annotated[
    int | None,
    typer.Option("--stop-at-step", min=1, help="Stop (with a checkpoint) at this step; --resume continues."),
]
TimeOption = Annotated[
    float | None,
    typer.Option(
        "--time-limit", min=1.0, help="Stop (with a checkpoint) after this many seconds of training."
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on rank 0.")]


def _overrides(
    sets: list[str] | None, max_steps: int | None, batch_size: int | None, device: str | None
) -> list[str]:
    items = list(sets or [])
    if max_steps is not None:
        items.append(f"optim.max_steps={max_steps}")
    if batch_size is not None:
        items.append(f"data.batch_size={batch_size}")
    if device is not None:
        items.append(f"run.device={device}")
    return items


def _load_recipe(config: Path, overrides: list[str], kind: str) -> Recipe:
    """The recipe, or a ConfigError naming the file and the field."""
    try:
        return load_recipe(config, overrides, kind=kind)
    except RecipeError as error:
        if str(config) in str(error):
            raise
        raise RecipeError(f"{config}: {error}") from error
    except FileNotFoundError as error:
        if isinstance(error, OpenHARTError):
            raise
        raise ConfigError(f"--config: {error}") from error


def _run(
    kind: str,
    config: Path,
    resume: bool,
    out: Path | None,
    overrides: list[str],
    stop_at_step: int | None,
    time_limit: float | None,
    verbose: bool,
) -> None:
    recipe = _load_recipe(config, overrides, kind)
    try:
        ctx = init_distributed(recipe.run.device)
    except ValueError as error:
        raise InvalidInputError(f"run.device: {error}") from error
    setup_logging(ctx.rank, verbose)
    try:
        if kind == "tokenizer":
            from openhart.training.tokenizer_trainer import TokenizerTrainer as trainer_class
        elif kind == "diffusion":
            from openhart.training.diffusion_trainer import DiffusionTrainer as trainer_class
        else:
            from openhart.training.generator_trainer import GeneratorTrainer as trainer_class
        try:
            trainer = trainer_class(recipe, out_dir=out, resume=resume, ctx=ctx)
        except FileExistsError as error:  # CheckpointError is a ModelLoadError already
            raise StorageError(f"--out/--resume: {error}") from error
        logger.info(
            "training %s (%s) on %s, %d process(es), out_dir %s",
            kind,
            recipe.preset,
            ctx.device,
            ctx.world_size,
            trainer.out_dir,
        )
        result = trainer.train(stop_at_step=stop_at_step, time_limit_s=time_limit)
        if ctx.is_main:
            state = "finished" if result.finished else "stopped (resume with --resume)"
            typer.echo(f"{kind} training {state} at step {result.steps}; model: {result.model_dir}")
    finally:
        cleanup_distributed()


# The recipe kinds ``openhart train KIND --config RECIPE`` runs, with each command's help.
TRAINED_KINDS = {
    "tokenizer": "Train a hybrid tokenizer (reconstruction + VQ, alternating discrete/hybrid decoding).",
    "generator": "Train the transformer + residual diffusion head on a frozen trained tokenizer.",
    "diffusion": "Train the latent-diffusion baseline (diffusers PixArt transformer) on a frozen trained tokenizer.",
}


def _train_command(kind: str) -> Callable[..., None]:
    """``openhart train KIND``: the same options for every kind; only the recipe kind differs."""

    def command(
        config: ConfigOption,
        resume: ResumeOption = False,
        out: OutOption = None,
        set_: SetOption = None,
        max_steps: MaxStepsOption = None,
        batch_size: BatchOption = None,
        device: DeviceOption = None,
        stop_at_step: StopOption = None,
        time_limit: TimeOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        _run(
            kind,
            config,
            resume,
            out,
            _overrides(set_, max_steps, batch_size, device),
            stop_at_step,
            time_limit,
            verbose,
        )

    command.__name__ = f"train_{kind}"
    command.__doc__ = TRAINED_KINDS[kind]
    return command


for _kind in TRAINED_KINDS:
    train_app.command(_kind)(_train_command(_kind))


@train_app.command("text-features")
def text_features(
    config: ConfigOption,
    out: Annotated[Path, typer.Option("--out", help="The .safetensors file to write.")],
    set_: SetOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Captions encoded at once.")] = 256,
    verbose: VerboseOption = False,
) -> None:
    """Precompute the text features of a generator recipe's captions (and sample prompts).

    Point the recipe's ``text_features`` at the file to train without running (or having) the
    text encoder: e.g. on a GPU machine without the encoder's weights.
    """
    from openhart.presets import preset_configs
    from openhart.text import build_text_encoder, load_text_encoder
    from openhart.training.batches import load_dataset
    from openhart.training.text_features import collect_captions, precompute_text_features

    setup_logging(0, verbose)
    recipe = _load_recipe(config, list(set_ or []), "generator")
    if recipe.pipeline is not None:
        encoder = load_text_encoder(Path(recipe.pipeline) / "text_encoder")
    else:
        encoder = build_text_encoder(recipe.component_configs()["text_encoder"])
    # Captions do not depend on the image size; any size the dataset accepts will do.
    dataset = load_dataset(recipe.data.train, preset_configs(recipe.preset).tokenizer.image_size)
    captions = collect_captions(dataset) + list(recipe.sampling.prompts)
    path = precompute_text_features(encoder, captions, out, batch_size=batch_size)
    typer.echo(f"wrote text features of {len(set(captions))} captions to {path}")


def _register_lora() -> None:
    # Its own module: a flag-driven command (--model --data --out) rather than a recipe file.
    from openhart.training.lora_cli import train_lora

    train_app.command("lora")(train_lora)


_register_lora()

if __name__ == "__main__":
    train_app()
