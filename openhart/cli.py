"""The ``openhart`` command: generate images, inspect models, benchmark.

openhart generate "a red fox in the snow" -o fox.png --model tiny --seed 0
openhart edit "a red hat" --image in.png --mask mask.png -o out.png
openhart info hart-0.7b-1024
openhart generate "sks cat" --model emoji-64 --lora runs/my-lora:0.8 -o cat.png
openhart bench --model hart-0.7b-512 --batch-size 1 --device cpu
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Annotated

import torch
import typer

from openhart.command_setup import (
    DeviceChoice,
    DtypeChoice,
    GuidanceOption,
    QuantizeOption,
    RandomWeightsOption,
    RevisionOption,
    SeedOption,
    TextEncoderOption,
    apply_memory_options,
    check_unguided_option,
    given_sampler_options,
    load_model,
    resolve_device,
    resolve_dtype,
)
from openhart.error_boundary import DEBUG_META_KEY, ErrorBoundaryGroup
from openhart.errors import (
    DependencyError,
    InvalidInputError,
    ModelLoadError,
    OpenHARTError,
    StorageError,
)
from openhart.loading import DEFAULT_MODEL, PACKAGED_WEIGHTS
from openhart.lora_cli import LoraOption, apply_lora_options
from openhart.presets import PRESETS, preset_configs
from openhart.utils.config import atomic_write_bytes
from openhart.utils.images import pil_grid, save_png
from openhart.validation import (
    check_encodable,
    check_output_file,
    check_output_folder,
    check_prompt,
    check_seed,
    png_output_paths,
)

app = typer.Typer(
    cls=ErrorBoundaryGroup,
    add_completion=False,
    no_args_is_help=True,
    help="OpenHART: text-to-image with HART.",
)
logger = logging.getLogger("openhart")


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show the traceback of an error instead of one line (or set OPENHART_DEBUG=1)."
        ),
    ] = False,
) -> None:
    """OpenHART: text-to-image with HART. Errors print one line and exit 3-8 (see README, Exit codes)."""
    ctx.meta[DEBUG_META_KEY] = debug


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )


@app.command()
def generate(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    output: Annotated[
        str, typer.Option("-o", "--output", help="PNG path (numbered when several images) or a folder.")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Model folder, Hugging Face repo id or preset name (default: the embedded model)."),
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option(help="Prompt for CFG's unconditional branch.")
    ] = None,
    seed: SeedOption = None,
    guidance_scale: GuidanceOption = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Residual diffusion steps (default: the model's, 8).")
    ] = None,
    num_images: Annotated[int, typer.Option(min=1, max=64, help="Images per prompt.")] = 1,
    top_k: Annotated[
        int | None, typer.Option(min=0, help="Keep the k most likely codes (0: all; default: the model's).")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Nucleus filter (default: the model's).")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Divides the token logits, > 0 (default: the model's)."),
    ] = None,
    residual_temperature: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Scales the residual head's per-step noise, >= 0 (0: no noise; default: the model's).",
        ),
    ] = None,
    unguided_last_scales: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Run the last N scales and the residual head without CFG (default: the model's speed.json).",
        ),
    ] = None,
    grid: Annotated[bool, typer.Option("--grid", help="Also write all images as one grid PNG.")] = False,
    device: Annotated[DeviceChoice, typer.Option(help="Where to run.")] = DeviceChoice.auto,
    dtype: Annotated[
        DtypeChoice,
        typer.Option(
            help="Weights dtype (auto: bf16 on CUDA, MPS, and CPUs with native bf16 for models of 200 MiB or more)."
        ),
    ] = DtypeChoice.auto,
    text_encoder: TextEncoderOption = None,
    revision: RevisionOption = None,
    random_weights: RandomWeightsOption = False,
    quantize: QuantizeOption = None,
    offload_text_encoder: Annotated[
        bool,
        typer.Option(
            "--offload-text-encoder", help="Free the text encoder's weights once prompts are encoded."
        ),
    ] = False,
    lora: LoraOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Generate images from prompts and write them as PNGs."""
    _setup_logging(verbose)
    # Everything the user typed is checked before the model loads (seconds to minutes).
    for index, prompt in enumerate(prompts):
        check_prompt(prompt, f"PROMPTS[{index}]")
    if negative_prompt is not None:
        check_encodable(negative_prompt, "--negative-prompt")
    if temperature is not None and not temperature > 0:  # also refuses nan
        raise InvalidInputError(f"--temperature: expected a number > 0, got {temperature}")
    if residual_temperature is not None and not residual_temperature >= 0:  # also refuses nan
        raise InvalidInputError(f"--residual-temperature: expected a number >= 0, got {residual_temperature}")
    total = len(prompts) * num_images
    if seed is not None:
        check_seed(seed, total, "--seed")
    paths = png_output_paths(output, total, "--output")
    torch_device = resolve_device(device.value)
    pipeline = load_model(
        model,
        torch_device,
        resolve_dtype(dtype.value, torch_device, model),
        random_weights=random_weights,
        revision=revision,
        text_encoder=text_encoder,
    )
    apply_lora_options(pipeline, lora, model or DEFAULT_MODEL)  # before int8: adapters on float weights
    apply_memory_options(pipeline, quantize, offload_text_encoder)
    if unguided_last_scales is not None:
        check_unguided_option(unguided_last_scales, pipeline)
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    generators = [torch.Generator().manual_seed(first_seed + i) for i in range(total)]
    result = pipeline(
        prompts,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        num_images_per_prompt=num_images,
        generator=generators,
        progress=torch_device.type == "cpu",
        unguided_last_scales=unguided_last_scales,
        **given_sampler_options(
            guidance_scale=guidance_scale,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            residual_temperature=residual_temperature,
        ),
    )
    images = result.images
    for index, (image, path) in enumerate(zip(images, paths, strict=True)):
        save_png(image, path)
        typer.echo(f"wrote {path}  (prompt {prompts[index // num_images]!r}, seed {first_seed + index})")
    if grid and total > 1:
        grid_path = paths[0].with_name(f"{paths[0].stem.rsplit('-', 1)[0]}-grid.png")
        save_png(pil_grid(images), grid_path)
        typer.echo(f"wrote {grid_path}  (grid of {total})")


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Model folder, Hugging Face repo id or preset name.")],
) -> None:
    """Print a model's components, parameter counts, scales and resolution."""
    from openhart.hub import looks_like_repo_id

    if not model.strip():  # Path("") is the working folder
        raise ModelLoadError("MODEL is empty: give a model folder, a preset name or a repo id")
    if Path(model).is_dir() or looks_like_repo_id(model):
        pipeline = load_model(model, torch.device("cpu"), torch.float32)
        configs = {name: module.config for name, module in pipeline.components.items()}
        counts = pipeline.num_parameters()
    elif model in PRESETS:
        preset = preset_configs(model)
        configs = {
            "text_encoder": preset.text_encoder,
            "tokenizer": preset.tokenizer,
            "transformer": preset.transformer,
            "diffusion_head": preset.diffusion_head,
        }
        counts = _count_parameters_without_allocating(model)
        typer.echo(f"preset {model}: {PRESETS[model].description}")
    else:
        raise ModelLoadError(
            f"MODEL: {model!r} is neither a model folder nor a preset (presets: {', '.join(sorted(PRESETS))}) "
            "nor a Hugging Face repo id (ORG/NAME)"
        )
    tokenizer, transformer = configs["tokenizer"], configs["transformer"]
    typer.echo(f"image size      {tokenizer.image_size} x {tokenizer.image_size}")
    typer.echo(f"scales          {len(transformer.patch_nums)}: {list(transformer.patch_nums)}")
    typer.echo(
        f"image tokens    {transformer.num_image_tokens} (+ {transformer.context_tokens} prompt tokens)"
    )
    typer.echo(f"codebook        {tokenizer.codebook_size} x {tokenizer.latent_channels}")
    for name, count in counts.items():
        typer.echo(f"{name:<16}{count / 1e6:>10.2f} M params   {type(configs[name]).__name__}")
    typer.echo(f"{'total':<16}{sum(counts.values()) / 1e6:>10.2f} M params")


def _count_parameters_without_allocating(preset: str) -> dict[str, int]:
    from openhart.diffusion import ResidualDiffusionHead
    from openhart.tokenizer import HybridTokenizer
    from openhart.transformer import HartTransformer

    configs = preset_configs(preset)
    counts = {}
    if configs.text_encoder.kind == "hash":
        counts["text_encoder"] = configs.text_encoder.vocab_size * configs.text_encoder.hidden_size
    else:
        from openhart.text import build_text_encoder

        counts["text_encoder"] = sum(p.numel() for p in build_text_encoder(configs.text_encoder).parameters())
    with torch.device("meta"):
        for name, module in (
            ("tokenizer", HybridTokenizer(configs.tokenizer)),
            ("transformer", HartTransformer(configs.transformer)),
            ("diffusion_head", ResidualDiffusionHead(configs.diffusion_head)),
        ):
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


@app.command()
def bench(
    model: Annotated[
        str, typer.Option(help="Model folder or preset name (presets use random weights).")
    ] = "tiny",
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    steps: Annotated[int | None, typer.Option(min=1, help="Residual diffusion steps.")] = None,
    guidance_scale: Annotated[float, typer.Option(min=0.0)] = 4.5,
    warmup: Annotated[int, typer.Option(min=0)] = 1,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    device: Annotated[DeviceChoice, typer.Option()] = DeviceChoice.auto,
    dtype: Annotated[DtypeChoice, typer.Option()] = DtypeChoice.auto,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON.")] = None,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay CUDA graphs (default: on CUDA devices)."),
    ] = None,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="pipe.compile(): torch.compile the transformer blocks, decoder and residual head (GPUs).",
        ),
    ] = False,
    unguided_last_scales: Annotated[
        int,
        typer.Option(
            min=0,
            help="Speed/quality knob (changes the images): run the last N scales and the residual head without CFG.",
        ),
    ] = 0,
    store_last_scale_keys: Annotated[
        bool,
        typer.Option(
            "--store-last-scale-keys",
            help="Keep room in the KV cache for the last scale (same images; more memory, faster at batch 8).",
        ),
    ] = False,
    quantize: QuantizeOption = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            help="Compare models instead (hart,var,diffusion,diffusion@STEPS): what `openhart compare` does; "
            "--batch-size is then the throughput batch.",
        ),
    ] = None,
) -> None:
    """Per-stage latency, end-to-end latency and peak memory of one model on one device (a table).

    For the released sizes it also prints the ratio to the official HART's numbers (docs/performance.md).
    """
    from openhart.evaluation.benchmark import benchmark_pipeline

    if compare is not None:
        from openhart.evaluation.cli import run_compare

        run_compare(
            models=compare,
            model=model,
            batch_size=batch_size,
            guidance_scale=guidance_scale,
            hart_steps=steps,
            warmup=warmup,
            repeats=repeats,
            device=device,
            dtype=dtype,
            json_out=json_out,
        )
        return
    logging.basicConfig(level=logging.ERROR)
    from openhart.hub import RELEASED_REPOS

    if json_out is not None:
        check_output_file(json_out, "--json")

    torch_device = resolve_device(device.value)
    # Speed does not depend on the weights: a preset without shipped weights is timed with random
    # weights of its architecture (offline, nothing downloaded); a repo id times the released weights.
    random_weights = model in PRESETS and not (PACKAGED_WEIGHTS / model).is_dir()
    pipeline = load_model(
        model, torch_device, resolve_dtype(dtype.value, torch_device, model), random_weights=random_weights
    )
    apply_memory_options(pipeline, quantize, offload_text_encoder=False)
    if random_weights:
        released = f" (pass {RELEASED_REPOS[model]} for the released ones)" if model in RELEASED_REPOS else ""
        typer.echo(f"weights: random, the architecture of {model}{released}")
    if cuda_graphs and torch_device.type != "cuda":
        raise DependencyError("--cuda-graphs: CUDA graphs need a CUDA device")
    check_unguided_option(unguided_last_scales, pipeline)
    if compile_:
        pipeline.compile()
    pipeline.set_speed_options(store_last_scale_keys=store_last_scale_keys)
    result = benchmark_pipeline(
        pipeline,
        preset=model,
        batch_size=batch_size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        warmup=max(warmup, 1) if compile_ else warmup,
        repeats=repeats,
        use_cuda_graphs=cuda_graphs,
        unguided_last_scales=unguided_last_scales,
    )
    typer.echo(result.table())
    if json_out is not None:
        try:
            atomic_write_bytes(json_out, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
        except OSError as error:
            raise StorageError(f"--json: cannot write {json_out}: {error.strerror or error}") from error
        typer.echo(f"wrote {json_out}")


@app.command()
def convert(
    source: Annotated[
        str, typer.Argument(help="Released checkpoint folder (llm/ + tokenizer/) or its repo id.")
    ],
    destination: Annotated[Path, typer.Argument(help="Where to write the OpenHART layout (safetensors).")],
    text_encoder: TextEncoderOption = None,
    revision: RevisionOption = None,
    ema: Annotated[
        bool, typer.Option(help="Use llm/ema_model.bin when present (what the official scripts use).")
    ] = True,
    system_prompt: Annotated[
        bool, typer.Option(help="Encode prompts behind the release's system prompt.")
    ] = True,
) -> None:
    """Convert the released HART checkpoint to the OpenHART layout, so later loads are pickle-free."""
    from openhart.compat import is_official_layout, load_official_pipeline
    from openhart.hub import (
        DEFAULT_TEXT_ENCODER_REPO,
        download_released,
        looks_like_repo_id,
        resolve_snapshot,
        text_model_folder,
    )

    check_output_folder(destination, "DESTINATION")  # before gigabytes are read and converted
    folder = Path(source)
    if not folder.is_dir() and looks_like_repo_id(source):
        snapshot = resolve_snapshot(source, revision)
        if snapshot.layout != "released":
            raise InvalidInputError(f"{source} is already in the OpenHART layout: use it as --model {source}")
        folder = download_released(snapshot, ema)
    if not folder.is_dir():
        raise ModelLoadError(f"SOURCE: no such folder: {source}")
    if not is_official_layout(folder):
        raise ModelLoadError(f"SOURCE: {source} has no llm/config.json and tokenizer/config.json")
    try:
        encoder_folder = text_model_folder(text_encoder or DEFAULT_TEXT_ENCODER_REPO)
    except FileNotFoundError as error:
        if isinstance(error, OpenHARTError):
            raise
        raise ModelLoadError(f"--text-encoder: {error}") from error
    try:
        pipeline = load_official_pipeline(
            folder, encoder_folder, prefer_ema=ema, use_system_prompt=system_prompt
        )
    except FileNotFoundError as error:  # offline with the configs cached but not the weights
        if isinstance(error, OpenHARTError):
            raise
        raise ModelLoadError(f"{source}: {error}") from error
    try:
        pipeline.save_pretrained(destination)
    except OSError as error:
        raise StorageError(f"DESTINATION: cannot write {destination}: {error.strerror or error}") from error
    typer.echo(f"wrote {destination} ({sum(pipeline.num_parameters().values()) / 1e6:.1f} M parameters)")


@app.command("compat-verify")
def compat_verify(
    folder: Annotated[Path, typer.Argument(help="Golden folder (golden/cases.json + official checkpoints).")],
    tolerance: Annotated[float, typer.Option(help="Max abs error on float32 tensors.")] = 1e-4,
) -> None:
    """Check OpenHART against golden tensors of the official code (one line per case)."""
    from openhart.compat.verify_cli import main as verify_main

    raise typer.Exit(verify_main([str(folder), "--tolerance", str(tolerance)]))


def _register_subcommands() -> None:
    from openhart.data.cli import data_app
    from openhart.edit_cli import edit
    from openhart.evaluation.cli import compare_command, eval_command
    from openhart.lora_cli import lora_app
    from openhart.serve.cli import serve
    from openhart.synthesis.cli import synthesize
    from openhart.training.cli import train_app

    app.add_typer(data_app, name="data")
    app.add_typer(train_app, name="train")
    app.add_typer(lora_app, name="lora")
    app.command()(serve)
    app.command()(synthesize)
    app.command()(edit)
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)


_register_subcommands()

if __name__ == "__main__":
    app()
