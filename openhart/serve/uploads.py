"""The edit route's two bodies: JSON with base64 images, or multipart/form-data with files.

Both end in the same checked request and the same decoded tensors. JSON is validated strictly
with the edit request model (``schema.build_edit_request_model``); a form is validated with the
form model (``schema.build_edit_form_model``), which shares every field, bound and validator but
reads text values in pydantic's lax mode, since a form has no numbers or booleans, only text.

Images are hostile input whichever body brings them: each file's size is checked before it is
decoded (on the base64 text, or on the uploaded part), its format by its first bytes, and its
pixel count from the header before any pixel is decoded. The body itself was already read within
its byte limit by the request guard, so the multipart parser only ever sees a bounded body.

Legend: H×W the input image's size.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import python_multipart  # noqa: F401  (starlette's parser needs it: missing, `serve` says so at start-up)
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from openhart.models.editing import (
    EditInputError,
    ImageTooLarge,
    decode_image_bytes,
    image_to_tensor,
    mask_to_tensor,
)
from openhart.serve.errors import MAX_LISTED_ERRORS, short_field
from openhart.serve.guard import parse_strict_json
from openhart.serve.queue import EditInputs
from openhart.serve.schema import ServeLimits

FILE_FIELDS = ("image", "mask")


class EditBodyError(Exception):
    """A body that cannot become an edit request: the HTTP status and the field to name."""

    def __init__(self, status: int, field: str, message: str, kind: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.kind = kind


class EditBodyInvalid(Exception):
    """The body's values broke the request model; ``errors`` are pydantic's, without the inputs."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def validate(model: type[BaseModel], values: Any, *, lax: bool) -> Any:
    """``values`` as a ``model``; EditBodyInvalid lists the fields that are wrong, never their values."""
    try:
        return model.model_validate(values, strict=not lax)
    except ValidationError as error:
        raise EditBodyInvalid(error.errors(include_url=False, include_input=False)) from None


def read_json_edit(
    body: bytes, model: type[BaseModel], limits: ServeLimits
) -> tuple[Any, bytes, bytes | None]:
    """(request, image file, mask file or None) of a JSON edit body with base64 images."""
    if not body:
        raise EditBodyInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        value = parse_strict_json(body)  # the guard has parsed it already: this cannot fail then
    except ValueError as error:
        raise EditBodyError(400, "body", str(error), "body_unparsable") from None
    request = validate(model, value, lax=False)
    image = base64_file(request.image, "image", limits)
    mask = None if request.mask is None else base64_file(request.mask, "mask", limits)
    return request, image, mask


def base64_file(text: str, field: str, limits: ServeLimits) -> bytes:
    """The file in ``text`` (base64 or a ``data:`` URL), its size checked before it is decoded."""
    if text.startswith("data:"):  # a data: URL, as a browser canvas gives
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise EditInputError(field, "a data: URL must be base64 (data:image/png;base64,...)")
    if len(text) * 3 // 4 > limits.max_image_bytes + 2:
        raise ImageTooLarge(field, f"larger than the limit of {limits.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise EditInputError(field, f"not valid base64 ({error})") from error
    if len(data) > limits.max_image_bytes:
        raise ImageTooLarge(field, f"larger than the limit of {limits.max_image_bytes} bytes")
    return data


async def read_form_edit(
    headers: Headers, body: bytes, model: type[BaseModel], limits: ServeLimits
) -> tuple[Any, bytes, bytes | None]:
    """(request, image file, mask file or None) of a multipart/form-data edit body.

    ``image`` and ``mask`` must be file parts (``curl -F image=@in.png``), every other field a text
    part; a field given twice is refused, as a JSON key given twice is by the guard.
    """
    # One part per field, plus room to name a few unknown ones before refusing the count outright.
    max_parts = len(model.model_fields) + MAX_LISTED_ERRORS

    async def chunks():
        yield body

    parser = MultiPartParser(
        headers, chunks(), max_files=max_parts, max_fields=max_parts, max_part_size=limits.max_body_bytes
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        # Starlette's messages are fixed sentences ("Missing boundary in multipart."): no input in them.
        raise EditBodyError(
            400, "body", f"unusable multipart/form-data ({error.message})", "body_unparsable"
        ) from None
    try:
        values: dict[str, Any] = {}
        for name, part in form.multi_items():
            field = short_field(name)
            if name in values:
                raise EditBodyError(422, field, "given twice", "duplicate_field")
            if name in FILE_FIELDS:
                if not isinstance(part, UploadFile):
                    raise EditBodyError(
                        422, field, f"must be a file part (curl -F {field}=@file.png)", "not_a_file"
                    )
                if part.size is not None and part.size > limits.max_image_bytes:
                    raise ImageTooLarge(field, f"larger than the limit of {limits.max_image_bytes} bytes")
                values[name] = await part.read()
            elif isinstance(part, UploadFile):
                if name in model.model_fields:
                    raise EditBodyError(422, field, "must be a text field, not a file", "not_text")
                values[name] = None  # an unknown field: the model names it, whatever it holds
            else:
                values[name] = part
    finally:
        await form.close()
    request = validate(model, values, lax=True)
    return request, request.image, request.mask


def decode_edit_inputs(
    image: bytes, mask: bytes | None, strength: float, paste_back: bool, limits: ServeLimits
) -> EditInputs:
    """The edit's files → checked tensors; EditInputError (ImageTooLarge: 413) names the field."""
    pixels = image_to_tensor(decode_image_bytes(image, "image", max_pixels=limits.max_image_pixels), "image")
    mask_pixels = None  # (1, H, W) when given
    if mask is not None:
        decoded = decode_image_bytes(mask, "mask", max_pixels=limits.max_image_pixels)
        mask_pixels = mask_to_tensor(decoded, "mask")
        if mask_pixels.shape[1:] != pixels.shape[1:]:  # pixels: (3, H, W)
            raise EditInputError(
                "mask",
                f"size {mask_pixels.shape[2]}×{mask_pixels.shape[1]} differs from the image's "
                f"{pixels.shape[2]}×{pixels.shape[1]}",
            )
    return EditInputs(image=pixels, mask=mask_pixels, strength=strength, paste_back=paste_back)
