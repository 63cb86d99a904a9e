"""``openhart edit``: inpainting, outpainting and variations of an image file from the command line.

openhart edit "a red hat" --image in.png --mask mask.png -o out.png --seed 0
openhart edit "a beach at sunset" --image in.png --outpaint left=64,right=64 -o wide.png
openhart edit "an oil painting" --image in.png --strength 0.6 -o variation.png

Bad input (a missing or non-image file, a mask of another size, a malformed --outpaint) exits
with code 2 and a one-line message that names the option.
"""

from __future__ import annotations

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
    RandomWeightsOption,
    SeedOption,
    given_sampler_options,
    load_model,
    resolve_device,
    resolve_dtype,
)
from openhart.errors import InvalidInputError, StorageError
from openhart.models.editing import DEFAULT_MAX_PIXELS, EditInputError, decode_image_bytes, outpaint_canvas
from openhart.utils.images import save_png
from openhart.validation import check_prompt, check_seed, png_output_paths

logger = logging.getLogger("openhart")

MAX_FILE_BYTES = 64 * 1024 * 1024  # an image file larger than this is refused before it is read
OUTPAINT_SIDES = ("left", "top", "right", "bottom")
# EditInputError.field → the option that carried it.
OPTION_OF_FIELD = {
    "image": "--image",
    "mask_image": "--mask",
    "strength": "--strength",
    "mask_threshold": "--mask-threshold",
    "feather_radius": "--feather",
    "prompt": "PROMPT",
}


def parse_outpaint(spec: str) -> dict[str, int]:
    """Parse ``left=64,right=32`` into {"left": 64, "right": 32}; InvalidInputError naming --outpaint otherwise."""
    sides: dict[str, int] = {}
    for part in spec.split(","):
        name, _, value = part.strip().partition("=")
        if name not in OUTPAINT_SIDES or not value.strip().isdigit():
            raise InvalidInputError(
                f"--outpaint: expected SIDE=PIXELS[,SIDE=PIXELS...] with SIDE in {', '.join(OUTPAINT_SIDES)}, "
                f"got {part!r}"
            )
        if name in sides:
            raise InvalidInputError(f"--outpaint: {name} is given twice")
        sides[name] = int(value)
    return sides


def read_image_file(path: Path, option: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Read and decode an image file; an OpenHARTError naming ``option`` and the file when it is unusable."""
    if not path.is_file():
        raise StorageError(f"{option}: no such file: {path}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidInputError(f"{option}: {path} is over {MAX_FILE_BYTES} bytes")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StorageError(f"{option}: cannot read {path} ({error.strerror or error})") from error
    try:
        return decode_image_bytes(data, option, max_pixels=max_pixels)
    except EditInputError as error:
        raise InvalidInputError(f"{option}: {path}: {str(error).removeprefix(option + ': ')}") from error


def edit(
    prompt: Annotated[str, typer.Argument(help="What the edited image (or its masked part) should show.")],
    image: Annotated[Path, typer.Option(help="Input image: PNG, JPEG or WebP.")],
    output: Annotated[str, typer.Option("-o", "--output", help="PNG path (numbered when several images).")],
    mask: Annotated[
        Path | None, typer.Option(help="Mask image of the input's size: white = repaint, black = keep.")
    ] = None,
    outpaint: Annotated[
        str | None,
        typer.Option(
            help="Grow the canvas and paint the new border: e.g. left=64,right=64 (pixels per side)."
        ),
    ] = None,
    strength: Annotated[
        float,
        typer.Option(
            help="1 = no scale forced; s forces the first round((1 - s)·S) scales to the input (0 = keep)."
        ),
    ] = 1.0,
    mask_threshold: Annotated[
        float, typer.Option(help="A token is repainted when more than this fraction of it is masked.")
    ] = 0.5,
    paste_back: Annotated[
        bool, typer.Option("--paste-back/--no-paste-back", help="Keep the input's pixels outside the mask.")
    ] = True,
    feather: Annotated[
        int | None, typer.Option(min=0, help="Seam half-width in pixels (default: 1% of the longer side).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model folder or preset name (default: the embedded model).")
    ] = None,
    seed: SeedOption = None,
    guidance_scale: GuidanceOption = None,
    num_images: Annotated[int, typer.Option(min=1, max=64, help="Edits to make.")] = 1,
    device: Annotated[DeviceChoice, typer.Option(help="Where to run.")] = DeviceChoice.auto,
    dtype: Annotated[
        DtypeChoice, typer.Option(help="Weights dtype (auto: bf16 on CUDA, fp32 elsewhere).")
    ] = DtypeChoice.auto,
    random_weights: RandomWeightsOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Edit an image with a prompt: inpaint a mask, outpaint a border, or make variations."""

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    # Everything the user typed is checked before the model loads.
    check_prompt(prompt, "PROMPT")
    if seed is not None:
        check_seed(seed, num_images, "--seed")
    paths = png_output_paths(output, num_images, "--output", allow_folder=False)
    if mask is not None and outpaint is not None:
        raise InvalidInputError("--outpaint: give --mask or --outpaint, not both")
    picture = read_image_file(image, "--image")
    mask_picture = read_image_file(mask, "--mask") if mask is not None else None
    if outpaint is not None:
        try:
            picture, mask_picture = outpaint_canvas(picture, **parse_outpaint(outpaint))
        except EditInputError as error:
            raise InvalidInputError(f"--outpaint: {error}") from error
    torch_device = resolve_device(device.value)
    pipeline = load_model(
        model, torch_device, resolve_dtype(dtype.value, torch_device, model), random_weights=random_weights
    )
    first_seed = seed if seed is not None else secrets.randbelow(2**31)
    generators = [torch.Generator().manual_seed(first_seed + i) for i in range(num_images)]
    try:
        images = pipeline.edit(
            prompt,
            picture,
            mask_picture,
            strength=strength,
            mask_threshold=mask_threshold,
            paste_back=paste_back,
            feather_radius=feather,
            num_images_per_prompt=num_images,
            generator=generators,
            progress=torch_device.type == "cpu",
            **given_sampler_options(guidance_scale=guidance_scale),
        ).images
    except EditInputError as error:
        option = OPTION_OF_FIELD.get(error.field)
        message = str(error).removeprefix(f"{error.field}: ") if option else str(error)
        raise InvalidInputError(f"{option}: {message}" if option else message) from error
    for index, (result, path) in enumerate(zip(images, paths, strict=True)):
        save_png(result, path)
        typer.echo(f"wrote {path}  ({result.width}x{result.height}, seed {first_seed + index})")
