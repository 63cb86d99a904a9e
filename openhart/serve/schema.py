"""The HTTP API's shapes: per-server limits, the generate request, and every response body.

Legend: N images of one request (``num_images``), H×W image size in pixels.

The request model is built per server (:func:`build_request_model`) because its bounds are the
server's limits (``--max-prompt-chars`` ...); that way the OpenAPI schema documents the bounds that
are actually enforced, and pydantic names the offending field in every 422. The request is strict:
unknown fields are refused (``extra="forbid"``), strings are never coerced to numbers, booleans are
not integers and NaN/±inf are not numbers. No field takes a file-system path.

This module deliberately has no ``from __future__ import annotations``: the request class is
defined inside a function and pydantic must see its annotations as objects, not strings.
"""

import dataclasses
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from openhart.utils.config import Config
from openhart.validation import MAX_PROMPT_CHARS, check_encodable, check_prompt

# Seeds stay below 2**32 so that they are exact as JavaScript numbers (the UI) and in any RNG.
MAX_SEED = 2**32 - 1
IMAGE_FORMATS = ("png", "jpeg", "base64")
# Formats that answer with the raw image bytes instead of JSON: one image per request.
RAW_FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a request with ``seed``: (seed + index) mod 2**32.

    Wrapping keeps every image's seed a seed the API accepts, so asking again with the seed an
    image reports (and one image) draws that image again, even for a request near MAX_SEED.
    """
    return (seed + index) % (MAX_SEED + 1)


@dataclasses.dataclass(frozen=True)
class ServeLimits(Config):
    """What one request may ask for; anything beyond gets a 4xx naming the field.

    max_prompt_chars: longest ``prompt`` / ``negative_prompt`` in characters (the text encoder
        truncates to its own token budget anyway; this only bounds the work and the memory).
    max_num_images: most images one request may ask for (N).
    max_steps: most residual diffusion steps (the head respaces its 1000 training steps).
    max_guidance_scale: largest CFG strength (HART's convention: 0 = conditional only).
    max_body_bytes: largest request body; bigger bodies get 413 before they are parsed.
        ``POST /api/edit`` may add two images of ``max_image_bytes`` each, base64-encoded.
    max_image_bytes: largest image (or mask) file of an edit, checked before decoding (413).
    max_image_pixels: most pixels of a decoded image (or mask); the header is checked before
        any pixel is decoded (decompression bombs).
    request_timeout_s: queue wait + generation of one request; past it the client gets 504
        and the work for it is dropped at the next stage boundary.
    """

    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_num_images: int = 4
    max_steps: int = 50
    max_guidance_scale: float = 20.0
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 120.0
    max_image_bytes: int = 4 << 20
    max_image_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        for name in (
            "max_prompt_chars",
            "max_num_images",
            "max_steps",
            "max_body_bytes",
            "max_image_bytes",
            "max_image_pixels",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("max_guidance_scale", "request_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def build_request_model(limits: ServeLimits, default_steps: int, default_guidance: float) -> type[BaseModel]:
    """The body of ``POST /api/generate`` with this server's ``limits`` as its bounds."""

    class GenerateRequest(BaseModel):
        """One prompt → ``num_images`` images; image i is drawn with seed ``(seed + i) mod 2**32``."""

        model_config = ConfigDict(
            **_STRICT,
            json_schema_extra={
                "examples": [{"prompt": "a red fox in the snow", "seed": 0, "guidance_scale": 4.5}]
            },
        )

        prompt: str = Field(
            min_length=1,
            max_length=limits.max_prompt_chars,
            description="What to draw (at least one non-space character).",
        )
        negative_prompt: str | None = Field(
            default=None,
            max_length=limits.max_prompt_chars,
            description="Prompt of CFG's unconditional branch; null: the model's empty context.",
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=MAX_SEED,
            description="Seed of image 0; image i uses (seed + i) mod 2**32, the seed each image "
            "reports; null: a random seed, returned.",
        )
        guidance_scale: float = Field(
            default=default_guidance,
            ge=0.0,
            le=limits.max_guidance_scale,
            description=f"CFG strength, HART's convention (0 = conditional only); default: the model's ({default_guidance}).",
        )
        steps: int | None = Field(
            default=None,
            ge=1,
            le=limits.max_steps,
            description=f"Residual diffusion steps; null: the model's default ({default_steps}).",
        )
        num_images: int = Field(default=1, ge=1, le=limits.max_num_images, description="Images to draw.")
        format: Literal["png", "jpeg", "base64"] = Field(
            default="base64",
            description="base64: JSON with base64 PNGs and the parameters used; png/jpeg: the raw image "
            "bytes of one image, the parameters in X-OpenHART-* headers.",
        )

        @field_validator("prompt")
        @classmethod
        def _prompt_valid(cls, value: str) -> str:
            return check_prompt(value, "prompt", limits.max_prompt_chars)  # the CLI's own definition

        @field_validator("negative_prompt")
        @classmethod
        def _negative_prompt_encodable(cls, value: str | None) -> str | None:
            return None if value is None else check_encodable(value, "negative_prompt")

        @field_validator("format")
        @classmethod
        def _raw_format_is_one_image(cls, value: str, info: ValidationInfo) -> str:
            count = info.data.get("num_images", 1)
            if value in RAW_FORMATS and count != 1:
                raise ValueError(
                    f"{value!r} answers with one raw image, so num_images must be 1 (got {count}); "
                    "use 'base64' for several"
                )
            return value

    return GenerateRequest


def edit_body_bytes(limits: ServeLimits) -> int:
    """Largest ``POST /api/edit`` body: the usual limit plus an image and a mask in base64 (4/3 size)."""
    return limits.max_body_bytes + 2 * 4 * math.ceil(limits.max_image_bytes / 3)


def build_edit_request_model(
    limits: ServeLimits, default_steps: int, default_guidance: float
) -> type[BaseModel]:
    """The JSON body of ``POST /api/edit``: an image (and a mask) in base64, with this server's limits."""
    options = _build_edit_options_model(limits, default_steps, default_guidance)

    class EditRequest(options):
        """Repaint the white part of ``mask`` (or, without one, the whole image from ``strength``)."""

        model_config = ConfigDict(
            json_schema_extra={
                "examples": [
                    {"prompt": "a red hat", "image": "<base64 PNG>", "mask": "<base64 PNG>", "seed": 0}
                ]
            },
        )

        image: str = Field(
            min_length=1,
            description=f"The input: a PNG, JPEG or WebP file in base64, or a data: URL; at most "
            f"{limits.max_image_bytes} bytes and {limits.max_image_pixels} pixels. Any size: it is "
            "resized to the model's and the result back.",
        )
        mask: str | None = Field(
            default=None,
            description="The mask, same encoding and size as the image: white = repaint, black = keep. "
            "null: no mask (variations with strength).",
        )

    return EditRequest


def build_edit_form_model(
    limits: ServeLimits, default_steps: int, default_guidance: float
) -> type[BaseModel]:
    """The multipart/form-data body of ``POST /api/edit``: the JSON body's fields, files for the images.

    Form values are text, so the app validates this model in pydantic's lax mode (``"0.5"`` is a
    number, ``"false"`` a boolean), with the same bounds, validators and unknown-field refusal as
    the JSON body; ``image`` and ``mask`` must be file parts.
    """
    options = _build_edit_options_model(limits, default_steps, default_guidance)

    class EditForm(options):
        """The same edit as the JSON body, with the image and the mask uploaded as files."""

        image: bytes = Field(
            min_length=1,
            description=f"The input file (PNG, JPEG or WebP by content); at most {limits.max_image_bytes} "
            f"bytes and {limits.max_image_pixels} pixels.",
        )
        mask: bytes | None = Field(
            default=None,
            description="The mask file, same size as the image: white = repaint, black = keep. "
            "Absent: no mask (variations with strength).",
        )

    return EditForm


def _build_edit_options_model(
    limits: ServeLimits, default_steps: int, default_guidance: float
) -> type[BaseModel]:
    """What the JSON and the multipart edit bodies share: everything but the image and the mask."""
    generate_request = build_request_model(limits, default_steps, default_guidance)

    class EditOptions(BaseModel):
        model_config = ConfigDict(**_STRICT)

        prompt: str = generate_request.model_fields["prompt"]
        strength: float = Field(
            default=1.0,
            ge=0.0,
            le=1.0,
            description="1: no scale forced; s forces the first round((1 - s)·S) scales to the input (0: keep).",
        )
        paste_back: bool = Field(
            default=True, description="Return the input's own pixels outside the mask (feathered seam)."
        )
        negative_prompt: str | None = generate_request.model_fields["negative_prompt"]
        seed: int | None = generate_request.model_fields["seed"]
        guidance_scale: float = generate_request.model_fields["guidance_scale"]
        steps: int | None = generate_request.model_fields["steps"]
        num_images: int = generate_request.model_fields["num_images"]

        @field_validator("prompt")
        @classmethod
        def _prompt_valid(cls, value: str) -> str:
            return check_prompt(value, "prompt", limits.max_prompt_chars)  # the CLI's own definition

        @field_validator("negative_prompt")
        @classmethod
        def _negative_prompt_encodable(cls, value: str | None) -> str | None:
            return None if value is None else check_encodable(value, "negative_prompt")

    return EditOptions


class UsedParameters(BaseModel):
    """The parameters a request was actually generated with (defaults and the random seed filled in)."""

    prompt: str
    negative_prompt: str | None
    seed: int = Field(description="Seed of image 0; image i used (seed + i) mod 2**32.")
    guidance_scale: float
    steps: int
    num_images: int
    format: str


class EditParameters(UsedParameters):
    """The parameters an edit was actually made with."""

    strength: float
    paste_back: bool
    width: int = Field(description="Width of the input image, and of the results.")
    height: int = Field(description="Height of the input image, and of the results.")


class GeneratedImage(BaseModel):
    seed: int
    width: int
    height: int
    media_type: str = "image/png"
    data: str = Field(description="The encoded image, base64 (standard alphabet, padded).")


class Timings(BaseModel):
    queue_s: float = Field(description="Seconds waiting for a worker.")
    inference_s: float = Field(description="Seconds of the generation call (shared by a batch).")
    batch_images: int = Field(description="Images generated in the same call (batching).")


class GenerateResponse(BaseModel):
    images: list[GeneratedImage]
    parameters: UsedParameters
    timings: Timings


class EditResponse(BaseModel):
    images: list[GeneratedImage]
    parameters: EditParameters
    timings: Timings


class ErrorDetail(BaseModel):
    field: str
    message: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is one human-readable line that names the field."""

    detail: str
    errors: list[ErrorDetail] = Field(default_factory=list)


class QueueStats(BaseModel):
    workers: int
    capacity: int = Field(description="Jobs that may wait for a worker before 503.")
    pending: int
    running: int
    max_batch_images: int
    completed: int
    rejected: int


class HealthResponse(BaseModel):
    status: Literal["ok", "closing"]
    model: str
    queue: QueueStats


class ModelCard(BaseModel):
    """What ``GET /api/model`` reports: what is loaded, what it makes, what a request may ask."""

    name: str = Field(description="Preset name or the model folder's name (never a full path).")
    weights: Literal["folder", "preset-trained", "preset-random", "hub"]
    image_size: int
    num_scales: int
    patch_nums: list[int]
    text_encoder: str
    context_tokens: int
    parameters: dict[str, int]
    device: str
    dtype: str
    defaults: dict[str, Any]
    limits: dict[str, Any]
    safety_checker: str | None = Field(description="Kind of the prompt-safety hook, null when off.")
    version: str
