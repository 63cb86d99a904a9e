"""Image editing with HART: inpainting, outpainting and variations, without any training.

A scale-wise model can edit an image by teacher forcing. The input image is encoded to its token
pyramid (ids per scale) and its continuous residual; at every scale the tokens outside the mask
are forced to the input's ids and only those inside are sampled, and the residual head samples
the residual inside the mask while the input's residual is kept outside. The sampler itself is
generation's (:func:`openhart.sampling.sample_token_pyramid` with
:class:`~openhart.sampling.ForcedTokens`): guidance, its ramp, top-k/top-p and the generators work
the same, and with nothing forced an edit *is* a generation, draw for draw.

* **Inpainting**: a mask, white = repaint. The mask is area-downsampled to each scale's grid; a
  token is sampled when more than ``mask_threshold`` (default 0.5: most) of its area is masked.
* **Outpainting**: inpainting on a larger canvas (:func:`outpaint_canvas`).
* **Variations** (image-to-image): ``strength`` s forces the first k = round((1 − s)·S) scales
  entirely (S scales; half rounds up) and samples the rest: s = 0 returns the tokenizer's
  reconstruction, s = 1 is generation. With a mask, the later scales are still forced outside it.

By default the decoded result is pasted back onto the input: the mask, feathered by a box blur of
``feather_radius`` pixels, blends the two, so pixels farther than that from the mask are the
input's, bit for bit.

Legend: B images, S scales, pn side of scale k, l = pn² tokens of a scale, Cz latent channels,
P latent side, H×W image size (the input's), N the model's image side.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from openhart.errors import InvalidInputError
from openhart.sampling import ForcedTokens

if TYPE_CHECKING:
    from openhart.models.hart import HartPipeline
    from openhart.tokenizer import HybridTokenizer

logger = logging.getLogger(__name__)

ImageInput = Image.Image | np.ndarray | torch.Tensor
OUTPUT_TYPES = ("pil", "np", "pt")
# Image files are hostile input: only these formats are decoded, recognised by their first bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096  # decoded pixels allowed per image file (decompression bombs)


class EditInputError(InvalidInputError):
    """An image, a mask or an editing option is unusable; ``field`` names the argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ImageTooLarge(EditInputError):
    """An image file or its pixel count is over a limit (the HTTP API answers 413)."""


@dataclass
class HartEditOutput:
    """``images`` at the input's size: a list of PIL images, a (B, H, W, 3) float array in [0, 1],
    or a (B, 3, H, W) tensor."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


# ---------------------------------------------------------------------- files → images
def sniff_image_format(data: bytes) -> str | None:
    """The file's format from its signature ("PNG", "JPEG" or "WEBP"), whatever its name says; else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image_bytes(
    data: bytes, field: str = "image", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A PNG, JPEG or WebP file's bytes → a fully decoded single-frame PIL image; EditInputError otherwise.

    The format is taken from the signature, and Pillow may only use that decoder. The pixel count
    is checked from the header before any pixel is decoded (Pillow's own ``MAX_IMAGE_PIXELS``
    guard, with our limit and as an error instead of a warning); truncated or corrupt files,
    animations and CMYK images are refused.
    """
    if not data:
        raise EditInputError(field, "empty file")
    kind = sniff_image_format(data)
    if kind is None:
        raise EditInputError(field, "not a PNG, JPEG or WebP file (judged by its content, not its name)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    field, f"{width}×{height} is {width * height} pixels, over the limit of {max_pixels}"
                )
            if getattr(image, "n_frames", 1) > 1:
                raise EditInputError(field, f"animated image ({image.n_frames} frames); give a single frame")
            if image.mode == "CMYK":
                raise EditInputError(field, "CMYK image; convert it to RGB")
            image.load()
    except EditInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLarge(field, f"too many pixels ({error})") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise EditInputError(
            field, f"cannot decode the {kind} file: truncated or corrupt ({error})"
        ) from error
    return image


# ---------------------------------------------------------------------- inputs → tensors
def image_to_tensor(image: object, field: str = "image") -> torch.Tensor:
    """One image → (3, H, W) float32 in [0, 1] on the CPU.

    Accepts a PIL image (RGB, RGBA, L, LA, P; alpha is dropped), a numpy array (H, W), (H, W, 3)
    or (H, W, 4) of uint8 or of floats in [0, 1], or a tensor (3, H, W) of floats in [0, 1] (the
    pipeline's ``output_type="pt"``). CMYK and animated images are refused rather than guessed at.
    """
    if isinstance(image, Image.Image):
        if getattr(image, "n_frames", 1) > 1:
            raise EditInputError(field, f"animated image ({image.n_frames} frames); give a single frame")
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            raise EditInputError(field, f"image mode {image.mode} is not supported; convert it to RGB")
        array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255  # (3, H, W)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None].repeat(3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise EditInputError(field, f"expected a (H, W), (H, W, 3) or (H, W, 4) array, got {image.shape}")
        return image_to_tensor(torch.from_numpy(_unit_range(image[:, :, :3], field)).permute(2, 0, 1), field)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise EditInputError(field, f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise EditInputError(field, f"expected a float tensor in [0, 1], got {image.dtype}")
        _check_size(image.shape[1], image.shape[2], field)
        image = image.detach().to("cpu", torch.float32)
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise EditInputError(field, "values must be finite and in [0, 1]")
        return image
    raise EditInputError(field, f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")


def mask_to_tensor(mask: object, field: str = "mask_image") -> torch.Tensor:
    """One mask → (1, H, W) float32 in [0, 1], white (1) = repaint.

    Accepts a PIL image (converted to greyscale), a numpy array (H, W) of bools, uint8 or floats
    in [0, 1], or a tensor (H, W) or (1, H, W) of the same.
    """
    if isinstance(mask, Image.Image):
        if getattr(mask, "n_frames", 1) > 1:
            raise EditInputError(field, f"animated image ({mask.n_frames} frames); give a single frame")
        if mask.mode == "CMYK":
            raise EditInputError(field, "image mode CMYK is not supported; give a greyscale mask")
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(_unit_range(mask, field))
    if not isinstance(mask, torch.Tensor):
        raise EditInputError(field, f"expected a PIL image, numpy array or tensor, got {type(mask).__name__}")
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise EditInputError(field, f"expected a (H, W) mask, got shape {tuple(mask.shape)}")
    _check_size(mask.shape[0], mask.shape[1], field)
    if mask.dtype == torch.bool:
        mask = mask.float()
    elif mask.dtype == torch.uint8:
        mask = mask.float() / 255
    elif not mask.is_floating_point():
        raise EditInputError(field, f"expected bools, uint8 or floats in [0, 1], got {mask.dtype}")
    mask = mask.detach().to("cpu", torch.float32)
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise EditInputError(field, "values must be finite and in [0, 1]")
    return mask.unsqueeze(0)  # (1, H, W)


def outpaint_canvas(
    image: ImageInput, *, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place ``image`` on a canvas grown by the given pixels per side: (canvas (3, H', W'), mask (1, H', W')).

    The new border repeats the image's edge pixels (a colour hint for the coarse scales) and is
    masked white; the image itself is black in the mask, so with paste-back it comes back unchanged.
    """
    pads = {"left": left, "top": top, "right": right, "bottom": bottom}
    for name, value in pads.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise EditInputError(f"outpaint.{name}", f"expected an int ≥ 0, got {value!r}")
    if not any(pads.values()):
        raise EditInputError("outpaint", "grow at least one side by ≥ 1 pixel")
    pixels = image_to_tensor(image)
    _, H, W = pixels.shape
    _check_size(H + top + bottom, W + left + right, "outpaint")
    canvas = F.pad(pixels[None], (left, right, top, bottom), mode="replicate")[0]  # (3, H', W')
    mask = torch.ones(1, H + top + bottom, W + left + right)
    mask[:, top : top + H, left : left + W] = 0
    return canvas, mask


# ---------------------------------------------------------------------- the method's pieces
def strength_to_forced_scales(strength: float, num_scales: int) -> int:
    """k = round((1 − strength)·S), half up: how many of the coarsest scales are forced entirely."""
    return min(num_scales, math.floor((1 - strength) * num_scales + 0.5))


def sampled_token_masks(
    mask: torch.Tensor, patch_nums: Sequence[int], threshold: float
) -> list[torch.Tensor]:
    """Mask (B, 1, N, N) in [0, 1] → per scale (B, pn²) bool, True where a token is sampled.

    The mask is area-downsampled to each scale's grid (the quantizer's own downsampling): a
    token's value is the masked fraction of its area, and the token is sampled when that fraction
    is above ``threshold``.
    """
    out = []
    for pn in patch_nums:
        coverage = F.interpolate(mask, size=(pn, pn), mode="area")  # (B, 1, pn, pn)
        out.append((coverage > threshold).flatten(1))  # (B, pn²) row-major, as the token ids
    return out


def feathered_weights(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Mask (B, 1, H, W) → paste-back weights: a box blur of side 2r + 1 (edges replicated).

    A pixel farther than r from every masked pixel gets exactly 0, so it keeps the input's value
    bit for bit; an all-white mask stays exactly 1.
    """
    if radius == 0:
        return mask
    padded = F.pad(mask, (radius, radius, radius, radius), mode="replicate")
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def paste_onto(original: torch.Tensor, edited: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """original·(1 − w) + edited·w, written so that w = 0 gives the original and w = 1 the edit exactly."""
    return original * (1 - weights) + edited * weights


@torch.no_grad()
def forced_tokens_for_edit(
    tokenizer: HybridTokenizer,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    *,
    strength: float = 1.0,
    mask_threshold: float = 0.5,
    image_of_row: torch.Tensor | None = None,
) -> ForcedTokens:
    """The edit's teacher forcing: images (U, 3, N, N) in [0, 1] and masks (B, 1, N, N), white = repaint.

    Encodes the images to their ids per scale and residual; a token is sampled when it lies in
    the mask (:func:`sampled_token_masks`) and its scale is not among the first
    :func:`strength_to_forced_scales` ones; every other token is forced to the input's id.
    ``image_of_row`` (B,) int64 says which image each row edits, so an image edited several times
    is encoded once (None: row i edits image i, U = B).
    """
    weight = tokenizer.quant_conv.weight
    latent = tokenizer.encode((pixels * 2 - 1).to(device=weight.device, dtype=weight.dtype))
    ids, residual = tokenizer.split(latent)  # per scale (U, pn²), (U, Cz, P, P)
    if image_of_row is not None:
        rows = image_of_row.to(residual.device)
        ids, residual = [scale_ids[rows] for scale_ids in ids], residual[rows]  # (B, pn²), (B, Cz, P, P)
    patch_nums = tokenizer.config.patch_nums
    forced_scales = strength_to_forced_scales(strength, len(patch_nums))
    sampled = sampled_token_masks(mask.to(ids[0].device), patch_nums, mask_threshold)
    keep = [~s | (k < forced_scales) for k, s in enumerate(sampled)]
    logger.debug(
        "edit: %d of %d scales forced; %d of %d last-scale tokens sampled",
        forced_scales,
        len(patch_nums),
        int((~keep[-1]).sum()),
        keep[-1].numel(),
    )
    return ForcedTokens(ids=ids, keep=keep, residual=residual)


# ---------------------------------------------------------------------- the pipeline
class HartEditPipeline:
    """Inpainting, outpainting and variations with the components of a loaded :class:`HartPipeline`.

    Shares the pipeline (no weights are copied): ``HartEditPipeline(pipe)(prompt, image, mask)``
    or, the same, ``pipe.edit(prompt, image, mask)``.
    """

    def __init__(self, pipeline: HartPipeline) -> None:
        self.pipeline = pipeline

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: ImageInput | Sequence[ImageInput],
        mask_image: ImageInput | Sequence[ImageInput] | None = None,
        *,
        strength: float = 1.0,
        mask_threshold: float = 0.5,
        paste_back: bool = True,
        feather_radius: int | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        **generation_kwargs: Any,
    ) -> HartEditOutput | Any:
        """Edit ``image`` with ``prompt``.

        Args:
            prompt: one prompt or a list (one per image).
            image: a PIL image, numpy array or (3, H, W) tensor in [0, 1] (see
                :func:`image_to_tensor`), or a list of them, one per prompt; one image serves every
                prompt. All images must share one size; another size than the model's is resized to
                it and the result resized back.
            mask_image: white = repaint, black = keep (see :func:`mask_to_tensor`), the image's
                size; one or one per image. None repaints everything (variations, with ``strength``).
            strength: in [0, 1]; the first round((1 − strength)·S) scales are forced entirely to the
                input's tokens (0: the tokenizer's reconstruction; 1: no scale forced).
            mask_threshold: in [0, 1); a token is sampled when more than this fraction of its area
                is masked.
            paste_back: blend the result into the input with the feathered mask, so that pixels
                away from the mask are returned unchanged.
            feather_radius: the seam's half-width in pixels of the input (None: 1% of its longer
                side, at least 1).
            num_images_per_prompt: edits per prompt (consecutive in the output).
            output_type: "pil", "np" ((B, H, W, 3)) or "pt" ((B, 3, H, W)), all in [0, 1].
            return_dict: return :class:`HartEditOutput` (else the bare images).
            **generation_kwargs: the pipeline's sampling options, as in generation:
                ``negative_prompt``, ``guidance_scale``, ``guidance_ramp``, ``top_k``, ``top_p``,
                ``temperature``, ``generator`` (one, or one per output image), ...

        Raises:
            EditInputError: an unusable image, mask or editing option (``field`` names it).
        """
        pipe = self.pipeline
        # 1. Check the editing inputs (the pipeline checks the sampling options).
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise EditInputError("prompt", "expected a str or a non-empty list of str")
        if "forced_tokens" in generation_kwargs:
            raise EditInputError("forced_tokens", "is set by the edit itself")
        _check_number(strength, "strength", 0.0, 1.0, upper_open=False)
        _check_number(mask_threshold, "mask_threshold", 0.0, 1.0, upper_open=True)
        for flag_name, flag in (("paste_back", paste_back), ("return_dict", return_dict)):
            if not isinstance(flag, bool):  # "no" would be truthy
                raise EditInputError(flag_name, f"expected True or False, got {flag!r}")
        if feather_radius is not None and (
            isinstance(feather_radius, bool) or not isinstance(feather_radius, int) or feather_radius < 0
        ):
            raise EditInputError("feather_radius", f"expected an int ≥ 0 or None, got {feather_radius!r}")
        if output_type not in OUTPUT_TYPES:
            raise EditInputError("output_type", f"expected one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise EditInputError(
                "num_images_per_prompt", f"expected an int ≥ 1, got {num_images_per_prompt!r}"
            )
        if num_images_per_prompt < 1:
            raise EditInputError("num_images_per_prompt", f"expected an int ≥ 1, got {num_images_per_prompt}")
        distinct = [image_to_tensor(x, _item("image", i, image)) for i, x in enumerate(_as_list(image))]
        images = _broadcast(distinct, len(prompts), "image")
        # Which distinct image each prompt edits: one image for every prompt is encoded once.
        image_of_row = (
            torch.arange(len(prompts)) if len(distinct) > 1 else torch.zeros(len(prompts), dtype=torch.long)
        )
        H, W = images[0].shape[1:]
        for i, x in enumerate(images):
            if x.shape[1:] != (H, W):
                raise EditInputError(
                    f"image[{i}]", f"all images must share one size: {W}×{H} vs {x.shape[2]}×{x.shape[1]}"
                )
        if mask_image is None:
            masks = [torch.ones(1, H, W)] * len(images)
        else:
            masks = [
                mask_to_tensor(m, _item("mask_image", i, mask_image))
                for i, m in enumerate(_as_list(mask_image))
            ]
            masks = _broadcast(masks, len(images), "mask_image")
            for i, m in enumerate(masks):
                if m.shape[1:] != (H, W):
                    raise EditInputError(
                        _item("mask_image", i, mask_image),
                        f"size {m.shape[2]}×{m.shape[1]} differs from the image's {W}×{H}",
                    )
        # (B, 3, H, W) and (B, 1, H, W), image i repeated for its num_images_per_prompt edits.
        originals = torch.stack(images).repeat_interleave(num_images_per_prompt, dim=0)
        masks_full = torch.stack(masks).repeat_interleave(num_images_per_prompt, dim=0)

        # 2-3. Encode each distinct input once at the model's size; choose the forced tokens.
        N = pipe.image_size
        pixels = _resize(torch.stack(distinct), N, "bicubic").clamp(0, 1)  # (U, 3, N, N)
        masks_model = _resize(masks_full, N, "bilinear").clamp(0, 1)  # (B, 1, N, N)
        forced = forced_tokens_for_edit(
            pipe.tokenizer,
            pixels,
            masks_model,
            strength=float(strength),
            mask_threshold=float(mask_threshold),
            image_of_row=image_of_row.repeat_interleave(num_images_per_prompt),
        )

        # 4. Generation's sampler, with the kept tokens and residual teacher-forced; then decode.
        edited = pipe(
            list(prompts),
            num_images_per_prompt=num_images_per_prompt,
            output_type="pt",
            forced_tokens=forced,
            **generation_kwargs,
        ).images  # (B, 3, N, N) in [0, 1] on the CPU

        # 5. Back to the input's size, and paste back onto the input outside the mask.
        edited = _resize(edited.float(), (H, W), "bicubic").clamp(0, 1)
        if paste_back:
            radius = max(1, round(0.01 * max(H, W))) if feather_radius is None else feather_radius
            edited = paste_onto(originals, edited, feathered_weights(masks_full, radius))
        output = _to_output(edited, output_type)
        return HartEditOutput(images=output) if return_dict else output


# ---------------------------------------------------------------------- helpers
def _unit_range(array: np.ndarray, field: str) -> np.ndarray:
    """uint8 / bool / float array → float32 in [0, 1]; other dtypes and out-of-range floats refused."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise EditInputError(field, "float values must be finite and in [0, 1]")
        return array
    raise EditInputError(field, f"expected uint8, bool or float values, got {array.dtype}")


def _check_size(height: int, width: int, field: str) -> None:
    if height < 1 or width < 1:
        raise EditInputError(field, f"empty image ({width}×{height})")


def _check_number(value: object, field: str, low: float, high: float, *, upper_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EditInputError(field, f"expected a number, got {value!r}")
    if value < low or value > high or (upper_open and value == high):
        interval = f"[{low:g}, {high:g}{')' if upper_open else ']'}"
        raise EditInputError(field, f"expected a number in {interval}, got {value}")


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _item(field: str, index: int, value: object) -> str:
    return f"{field}[{index}]" if isinstance(value, (list, tuple)) else field


def _broadcast(items: list, count: int, field: str) -> list:
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise EditInputError(field, f"got {len(items)} for {count} prompts/images (give one, or one each)")
    return items


def _resize(images: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """(B, C, h, w) → (B, C, size); antialiased when shrinking; unchanged (same tensor) at the size already."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode=mode, antialias=True, align_corners=False)


def _to_output(images: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """(B, 3, H, W) in [0, 1] on the CPU → the output type (the pipeline's rounding for PIL)."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    if output_type == "np":
        return array
    return [Image.fromarray((x * 255).round().astype(np.uint8)) for x in array]
