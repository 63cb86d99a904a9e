"""``openhart lora merge|info`` and the ``--lora DIR[:SCALE]`` option of ``generate`` and ``serve``.

openhart lora merge emoji-64 runs/my-lora merged-model        # a standalone pipeline folder
openhart lora merge emoji-64 runs/a:0.7 runs/b:0.5 merged     # several adapters, each scaled
openhart lora info runs/my-lora                               # base model, rank, targets, size
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import torch
import typer

from openhart.errors import OpenHARTError
from openhart.models.hart import HartPipeline
from openhart.models.lora import ADAPTER_WEIGHTS, BaseRecord, adapter_folder, parse_lora_spec
from openhart.utils.config import read_json

logger = logging.getLogger("openhart")

lora_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="LoRA adapters: merge into a model, inspect."
)

LoraOption = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        help="LoRA adapter folder (or training run) trained on --model, optionally :SCALE (default 1); repeatable.",
    ),
]


@contextmanager
def one_line_errors() -> Iterator[None]:
    """At a command's edge: an OpenHARTError ends it with one line on stderr and its exit code."""
    try:
        yield
    except OpenHARTError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error


def apply_lora_options(pipeline: HartPipeline, specs: list[str] | None, base_name: str) -> None:
    """Load every ``--lora DIR[:SCALE]`` onto ``pipeline`` (``base_name``: the ``--model`` given)."""
    with one_line_errors():
        for spec in specs or []:
            path, scale = parse_lora_spec(spec)
            pipeline.load_lora(path, scale, base_name=base_name)


@lora_app.command("merge")
def merge(
    base: Annotated[str, typer.Argument(help="The base model: folder, preset or shipped name, repo id.")],
    adapters: Annotated[
        list[str], typer.Argument(help="LORA[:SCALE] ... then OUT, the pipeline folder to write.")
    ],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fuse adapters into BASE and write a standalone pipeline folder (loads without --lora)."""
    from openhart.command_setup import load_model

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    if len(adapters) < 2:
        raise typer.BadParameter("expected at least one LORA and then OUT", param_hint="LORA... OUT")
    *specs, out = adapters
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise typer.BadParameter(f"{out_dir} exists and is not empty", param_hint="OUT")
    # float32 on the CPU: the fused weights are saved, so no rounding beyond the base's own.
    pipeline = load_model(base, torch.device("cpu"), torch.float32)
    apply_lora_options(pipeline, specs, base)
    with one_line_errors():
        pipeline.fuse_lora()
        pipeline.unload_lora()  # fused updates stay in the weights
    pipeline.save_pretrained(out_dir)
    typer.echo(f"wrote {out_dir} ({len(specs)} adapter(s) fused into {base})")


@lora_app.command("info")
def info(folder: Annotated[Path, typer.Argument(help="Adapter folder or LoRA training run.")]) -> None:
    """The adapter's base model, rank, targets and size."""
    with one_line_errors():
        resolved = adapter_folder(folder)
        record = BaseRecord.read(resolved)
    config = read_json(resolved / "adapter_config.json")
    size = (resolved / ADAPTER_WEIGHTS).stat().st_size
    typer.echo(f"adapter:      {resolved}")
    typer.echo(f"base model:   {record.base_model} (weights sha256 {record.weights_sha256[:16]})")
    typer.echo(f"rank / alpha: {config.get('r')} / {config.get('lora_alpha')}")
    typer.echo(f"modules:      {config.get('target_modules')}")
    typer.echo(f"size:         {size / 1024:.1f} KiB")
    for key, value in record.extra.items():
        if key != "rank":
            typer.echo(f"{key + ':':<13} {value}")
