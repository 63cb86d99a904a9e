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

from openhart.models.editing import DEFAULT_MAX_PIXELS, EditInputError, decode_image_bytes, outpaint_canvas
from openhart.runtime import (
    DeviceChoice,
    DtypeChoice,
    RandomWeightsOption,
    load_model,
    resolve_device,
    resolve_dtype,
)
from openhart.utils.images import save_png

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
    """Parse ``left=64,right=32`` into {"left": 64, "right": 32}; typer.BadParameter naming --outpaint otherwise."""
    sides: dict[str, int] = {}
    for part in spec.split(","):
        name, _, value = part.strip().partition("=")
        if name not in OUTPAINT_SIDES or not value.strip().isdigit():
            raise typer.BadParameter(
                f"expected SIDE=PIXELS[,SIDE=PIXELS...] with SIDE in {', '.join(OUTPAINT_SIDES)}, got {part!r}",
                param_hint="--outpaint",
            )
        if name in sides:
            raise typer.BadParameter(f"{name} is given twice", param_hint="--outpaint")
        sides[name] = int(value)
    return sides


def read_image_file(path: Path, option: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Read and decode an image file; typer.BadParameter naming ``option`` when it is unusable."""
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {path}", param_hint=option)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise typer.BadParameter(f"{path} is over {MAX_FILE_BYTES} bytes", param_hint=option)
    try:
        return decode_image_bytes(path.read_bytes(), option, max_pixels=max_pixels)
    except EditInputError as error:
        raise typer.BadParameter(
            f"{path}: {str(error).removeprefix(option + ': ')}", param_hint=option
        ) from error


def edit(
    prompt: Annotated[str, typer.Argument(help="What the edited image (or its masked part) should show.")],
    image: Annotated[Path, typer.Option(help="Input image: PNG, JPEG or WebP.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG path (numbered when several images).")],
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
    seed: Annotated[
        int | None, typer.Option(min=0, help="Seed of image 0; image i uses seed + i. Random when unset.")
    ] = None,
    guidance_scale: Annotated[float, typer.Option(min=0.0, help="CFG strength (0 = no guidance).")] = 4.5,
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
    if output.suffix.lower() != ".png":
        raise typer.BadParameter(f"only .png output is supported, got {output.name!r}", param_hint="--output")
    if mask is not None and outpaint is not None:
        raise typer.BadParameter("give --mask or --outpaint, not both", param_hint="--outpaint")
    picture = read_image_file(image, "--image")
    mask_picture = read_image_file(mask, "--mask") if mask is not None else None
    if outpaint is not None:
        try:
            picture, mask_picture = outpaint_canvas(picture, **parse_outpaint(outpaint))
        except EditInputError as error:
            raise typer.BadParameter(str(error), param_hint="--outpaint") from error
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
            guidance_scale=guidance_scale,
            generator=generators,
            progress=torch_device.type == "cpu",
        ).images
    except EditInputError as error:
        option = OPTION_OF_FIELD.get(error.field)
        message = str(error).removeprefix(f"{error.field}: ") if option else str(error)
        raise typer.BadParameter(message, param_hint=option) from error
    except (ValueError, TypeError) as error:
        raise typer.BadParameter(str(error)) from error
    paths = (
        [output]
        if num_images == 1
        else [output.with_name(f"{output.stem}-{i:03d}.png") for i in range(num_images)]
    )
    for index, (result, path) in enumerate(zip(images, paths, strict=True)):
        save_png(result, path)
        typer.echo(f"wrote {path}  ({result.width}x{result.height}, seed {first_seed + index})")
