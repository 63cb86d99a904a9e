"""The FastAPI app of ``openhart serve``: a JSON API, a model card, health, and the browser page.

Legend: N images of one request.

Routes::

    GET  /                 the browser UI (static/index.html + static/app.js, over the API below)
    POST /api/generate     prompt → N images + the parameters actually used        (schema.py)
    POST /api/edit         prompt + image (+ mask) → N edits of the image, as JSON   (openhart.models.editing)
                           with base64 files or as multipart/form-data             (uploads.py)
    GET  /api/model        model card: what is loaded, image size, scales, parameters, limits
    GET  /health           liveness + queue depth
    GET  /openapi.json     the OpenAPI schema (no /docs page: it would load scripts from a CDN)

Every error is JSON ``{"detail": "<field>: <what is wrong>", "errors": [...]}``, at most 4 KiB and
never quoting the input's values (errors.py): 400 malformed JSON or HTTP, a key twice in one
object, or a Host not allowed; 404 unknown route; 405 unknown method; 408 headers or body too slow
(protocol.py); 403 an edit form posted from another site's page; 413 body too large; 415 not
``application/json`` in UTF-8 (nor, for an edit, ``multipart/form-data``); 422 a field out of
bounds, of the wrong type, unknown, or refused by the safety hook (and for an edit: an image that
is not PNG/JPEG/WebP by content, truncated, animated, CMYK, or a mask of another size), 413 also
for an image over ``max_image_bytes`` or ``max_image_pixels``; 503 queue full or too many
connections (with Retry-After) or shutting down; 504 past the per-request timeout. The checks
made before a route runs live in guard.py. Clients never name files: the page and its script are
read once at start-up and served from memory.

One file on purpose: the routes share the per-server request models, queue and card built in
:func:`create_app`, and reading them together shows every answer a client can get; the checks,
parsers and schemas they call live in their own modules.

This module has no ``from __future__ import annotations``: the generate route's body type is
built per server, and FastAPI must see it as a class, not a string.
"""

import asyncio
import json
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from openhart.models.editing import EditInputError, ImageTooLarge
from openhart.serve.errors import ErrorJSONResponse, error_response, short_field
from openhart.serve.guard import FORM_MEDIA_TYPE, RequestGuard, media_type_and_charset
from openhart.serve.queue import (
    GenerationQueue,
    GenerationRequest,
    GenerationResult,
    JobAbandoned,
    QueueClosed,
    QueueFull,
    to_base64,
)
from openhart.serve.safety import SafetyChecker
from openhart.serve.schema import (
    MAX_SEED,
    RAW_FORMATS,
    EditParameters,
    EditResponse,
    ErrorResponse,
    GeneratedImage,
    GenerateResponse,
    HealthResponse,
    ModelCard,
    ServeLimits,
    Timings,
    UsedParameters,
    build_edit_form_model,
    build_edit_request_model,
    build_request_model,
    edit_body_bytes,
    image_seed,
)
from openhart.serve.uploads import (
    EditBodyError,
    EditBodyInvalid,
    decode_edit_inputs,
    read_form_edit,
    read_json_edit,
)
from openhart.version import __version__

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The only files the server ever sends: URL path → (file in STATIC_DIR, media type).
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
# The page only talks to its own origin and shows images from data: URLs.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Random seeds stay below 2**31 like the CLI's, well inside the accepted [0, MAX_SEED].
RANDOM_SEED_BOUND = min(2**31, MAX_SEED + 1)


def build_model_card(
    pipeline: Any,
    name: str,
    weights: str,
    limits: ServeLimits,
    safety: SafetyChecker | None = None,
) -> ModelCard:
    transformer = pipeline.transformer.config
    return ModelCard(
        name=name,
        weights=weights,
        image_size=pipeline.image_size,
        num_scales=len(transformer.patch_nums),
        patch_nums=list(transformer.patch_nums),
        text_encoder=pipeline.text_encoder.config.kind,
        context_tokens=transformer.context_tokens,
        parameters=pipeline.num_parameters(),
        device=str(pipeline.device),
        dtype=str(pipeline.dtype).removeprefix("torch."),
        defaults={
            # The model's own sampler defaults (its sampler.json), what a request without them gets.
            "guidance_scale": pipeline.default_guidance_scale,
            "steps": pipeline.default_num_inference_steps,
            "num_images": 1,
            "format": "base64",
        },
        limits={**limits.to_dict(), "max_seed": MAX_SEED},
        safety_checker=safety.describe() if safety is not None else None,
        version=__version__,
    )


def _queue_full_response(full: QueueFull) -> ErrorJSONResponse:
    return error_response(503, str(full), kind="queue_full", headers={"Retry-After": str(full.retry_after_s)})


def _describe_validation_error(error: dict[str, Any]) -> tuple[str, str, str]:
    """(field, message naming the field, type) of one pydantic/FastAPI validation error."""
    location = [short_field(str(part)) for part in error.get("loc", ()) if part != "body"]
    kind = str(error.get("type", "invalid"))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        position = location[0] if location else "?"
        return "body", f"body: malformed JSON ({reason} at position {position})", kind
    field = ".".join(location) or "body"
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field (see GET /openapi.json for the accepted fields)", kind
    if kind == "missing":
        return field, f"{field}: required", kind
    # pydantic's messages state the rule ("Input should be a valid string"), never the input itself.
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return field, f"{field}: {message}", kind


def create_app(
    queue: GenerationQueue,
    card: ModelCard,
    limits: ServeLimits,
    safety: SafetyChecker | None = None,
    cors_origins: tuple[str, ...] = (),
    allowed_hosts: tuple[str, ...] = (),
) -> FastAPI:
    """The app for one loaded model. The queue's workers start and stop with the app's lifespan.

    ``allowed_hosts``: the Host header values accepted ("*.example.com" patterns); empty: any.
    """
    default_steps = int(card.defaults["steps"])
    default_guidance = float(card.defaults["guidance_scale"])
    request_model = build_request_model(limits, default_steps, default_guidance)
    edit_request_model = build_edit_request_model(limits, default_steps, default_guidance)
    edit_form_model = build_edit_form_model(limits, default_steps, default_guidance)
    static = {
        route: ((STATIC_DIR / filename).read_bytes(), media_type)
        for route, (filename, media_type) in STATIC_FILES.items()
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        logger.info(
            "serving %s with %d worker(s), %d waiting slot(s)", card.name, queue.workers, queue.capacity
        )
        yield
        # In-flight requests have finished (or timed out) by now; stop the workers.
        await run_in_threadpool(queue.close, limits.request_timeout_s)
        logger.info("workers stopped")

    app = FastAPI(
        title="OpenHART",
        version=__version__,
        summary="Text-to-image with HART: a local JSON API and browser UI.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
        # Starlette answers /api/generate/ with a 307 to the same path without the slash, built
        # from the client's Host header: a redirect to any site the client names. Exact paths only.
        redirect_slashes=False,
    )

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, exc: RequestValidationError) -> ErrorJSONResponse:
        described = [_describe_validation_error(error) for error in exc.errors()]
        status = 400 if any(kind == "json_invalid" for _, _, kind in described) else 422
        return ErrorJSONResponse(
            status,
            "; ".join(message for _, message, _ in described[:3]),
            [{"field": f, "message": m, "type": k} for f, m, k in described],
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> ErrorJSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and cause is not None:
            # FastAPI's "error parsing the body" (the guard parses API bodies first, so this is a
            # fallback): the exception's type only, since its text may quote the body.
            detail = f"body: cannot be parsed as JSON ({type(cause).__name__})"
            return error_response(400, detail, "body", "body_unparsable")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception) -> ErrorJSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (see the server log)", kind="internal")

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": description}
        for code, description in (
            (400, "Malformed JSON, a key twice in one object, or a Host not allowed."),
            (405, "A method the server does not speak (only GET, HEAD, POST, OPTIONS)."),
            (408, "Headers or body not received within the server's timeouts."),
            (413, "Body larger than max_body_bytes."),
            (415, "Content-Type is not application/json, or its charset is not utf-8."),
            (
                422,
                "A field is missing, unknown, of the wrong type, out of bounds, or refused by the safety hook.",
            ),
            (503, "Queue full or too many connections (see Retry-After), or shutting down."),
            (504, "Not finished within request_timeout_s (queue wait included)."),
        )
    }

    async def refuse_prompt(prompt: str) -> ErrorJSONResponse | None:
        """The safety hook's 422 (or 500 when it fails) for ``prompt``; None when it may be drawn."""
        if safety is None:
            return None
        try:
            reason = await run_in_threadpool(safety, prompt)
        except Exception:
            logger.exception("the prompt-safety checker failed; refusing the request")
            return error_response(500, "prompt: the prompt-safety checker failed", "prompt", "safety_error")
        if reason:
            return error_response(
                422, f"prompt: refused by the prompt-safety checker ({reason})", "prompt", "unsafe_prompt"
            )
        return None

    async def run_job(request: GenerationRequest) -> GenerationResult | ErrorJSONResponse:
        """Queue ``request`` and wait for it within the timeout; the error response otherwise."""
        try:
            job = queue.submit(request)
        except QueueFull as full:
            return _queue_full_response(full)
        except QueueClosed as closed:
            return error_response(503, str(closed), kind="shutting_down", headers={"Retry-After": "10"})
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout=limits.request_timeout_s)
        except asyncio.TimeoutError:
            queue.abandon(job)
            return error_response(
                504,
                f"not finished within {limits.request_timeout_s:g} s (queue wait included); "
                "retry later or ask for fewer images or steps",
                kind="timeout",
            )
        except asyncio.CancelledError:
            queue.abandon(job)
            raise
        except (QueueClosed, JobAbandoned):
            return error_response(503, "stopped: the server is shutting down", kind="shutting_down")
        except EditInputError as error:
            return error_response(422, str(error), error.field, "invalid_image")
        except (ValueError, TypeError) as error:
            return error_response(422, str(error), kind="pipeline_rejected")

    @app.post(
        "/api/generate",
        response_model=GenerateResponse,
        responses={
            200: {
                "description": "JSON (format base64), or the raw image (format png/jpeg) with the "
                "parameters in X-OpenHART-Seed / X-OpenHART-Parameters headers.",
                "content": {"image/png": {}, "image/jpeg": {}},
            },
            **error_responses,
        },
        summary="Generate images from a prompt",
    )
    async def generate(body: request_model) -> Any:  # type: ignore[valid-type]
        refused = await refuse_prompt(body.prompt)
        if refused is not None:
            return refused
        request = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            seed=body.seed if body.seed is not None else secrets.randbelow(RANDOM_SEED_BOUND),
            guidance_scale=float(body.guidance_scale),
            steps=body.steps if body.steps is not None else default_steps,
            num_images=body.num_images,
            image_format="jpeg" if body.format == "jpeg" else "png",
        )
        result = await run_job(request)
        if isinstance(result, ErrorJSONResponse):
            return result
        used = UsedParameters(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            guidance_scale=request.guidance_scale,
            steps=request.steps,
            num_images=request.num_images,
            format=body.format,
        )
        if body.format in RAW_FORMATS:
            return Response(
                content=result.images[0],
                media_type=RAW_FORMATS[body.format],
                headers={
                    "X-OpenHART-Seed": str(request.seed),
                    # ensure_ascii: headers are latin-1, prompts are not.
                    "X-OpenHART-Parameters": json.dumps(used.model_dump(), ensure_ascii=True),
                },
            )
        return GenerateResponse(
            images=_png_images(result, request.seed),
            parameters=used,
            timings=_timings(result),
        )

    # One route, two bodies: FastAPI documents one content type per body parameter, so the route
    # reads the body itself and the schema names both (the models are added in openapi() below).
    edit_request_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{edit_request_model.__name__}"}},
            FORM_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{edit_form_model.__name__}"}},
        },
    }

    @app.post(
        "/api/edit",
        response_model=EditResponse,
        responses={
            200: {
                "description": "JSON: the edits as base64 PNGs at the input's size, and the parameters used."
            },
            **error_responses,
            403: {"model": ErrorResponse, "description": "A form posted from another site's page."},
            415: {
                "model": ErrorResponse,
                "description": "Content-Type is neither application/json (utf-8) nor multipart/form-data.",
            },
        },
        openapi_extra={"requestBody": edit_request_body},
        summary="Edit an image: inpaint the white part of a mask, or make variations (strength)",
    )
    async def edit(http_request: Request) -> Any:
        media_type, _ = media_type_and_charset(http_request.headers.get("content-type", "").encode("latin-1"))
        raw = await http_request.body()  # already read by the guard, within the route's limit
        try:
            if media_type == FORM_MEDIA_TYPE.encode():
                body, image, mask = await read_form_edit(http_request.headers, raw, edit_form_model, limits)
            else:
                body, image, mask = await run_in_threadpool(read_json_edit, raw, edit_request_model, limits)
        except EditBodyInvalid as invalid:
            return await on_invalid_request(http_request, RequestValidationError(invalid.errors))
        except EditBodyError as error:
            return error_response(error.status, str(error), error.field, error.kind)
        except ImageTooLarge as error:
            return error_response(413, str(error), error.field, "image_too_large")
        except EditInputError as error:
            return error_response(422, str(error), error.field, "invalid_image")
        refused = await refuse_prompt(body.prompt)
        if refused is not None:
            return refused
        try:
            inputs = await run_in_threadpool(
                decode_edit_inputs, image, mask, float(body.strength), body.paste_back, limits
            )
        except ImageTooLarge as error:
            return error_response(413, str(error), error.field, "image_too_large")
        except EditInputError as error:
            return error_response(422, str(error), error.field, "invalid_image")
        request = GenerationRequest(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            seed=body.seed if body.seed is not None else secrets.randbelow(RANDOM_SEED_BOUND),
            guidance_scale=float(body.guidance_scale),
            steps=body.steps if body.steps is not None else default_steps,
            num_images=body.num_images,
            edit=inputs,
        )
        result = await run_job(request)
        if isinstance(result, ErrorJSONResponse):
            return result
        used = EditParameters(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=request.seed,
            guidance_scale=request.guidance_scale,
            steps=request.steps,
            num_images=request.num_images,
            format="base64",
            strength=inputs.strength,
            paste_back=inputs.paste_back,
            width=result.width,
            height=result.height,
        )
        return EditResponse(
            images=_png_images(result, request.seed),
            parameters=used,
            timings=_timings(result),
        )

    @app.get("/api/model", response_model=ModelCard, summary="The loaded model and the request limits")
    async def model_card() -> ModelCard:
        return card

    @app.get(
        "/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "Shutting down."}},
        summary="Liveness and queue depth",
    )
    async def health() -> JSONResponse:
        closing = queue.closing
        content = HealthResponse(status="closing" if closing else "ok", model=card.name, queue=queue.stats())
        return JSONResponse(status_code=503 if closing else 200, content=content.model_dump())

    def static_route(path: str) -> None:
        data, media_type = static[path]
        headers = {"Cache-Control": "no-cache"}
        if media_type.startswith("text/html"):
            headers["Content-Security-Policy"] = PAGE_CSP

        async def serve_file() -> Response:
            return Response(content=data, media_type=media_type, headers=headers)

        app.get(path, include_in_schema=False)(serve_file)

    for path in static:
        static_route(path)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the two edit bodies, which no route parameter declares."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (edit_request_model, edit_form_model):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # FastAPI's documented way to extend the generated schema

    app.add_middleware(
        RequestGuard,
        max_body_bytes=limits.max_body_bytes,
        refuse_if_full=queue.refuse_if_full,
        full_response=_queue_full_response,
        path_body_bytes={"/api/edit": edit_body_bytes(limits)},
        path_form_uploads=frozenset({"/api/edit"}),
        allowed_origins=cors_origins,
        path_fields={
            "/api/generate": frozenset(request_model.model_fields),
            "/api/edit": frozenset(edit_request_model.model_fields),
        },
        allowed_hosts=allowed_hosts,
    )
    if cors_origins:
        # Off unless the operator names origins: browsers then let those sites call the API. Added
        # last, so it wraps the guard and its early 413/415/503 answers carry the CORS headers too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type"],
        )
    return app


def _png_images(result: Any, seed: int) -> list[GeneratedImage]:
    """A queue result's PNGs as response items; image i carries its own seed (schema.image_seed)."""
    return [
        GeneratedImage(
            seed=image_seed(seed, i),
            width=result.width,
            height=result.height,
            media_type="image/png",
            data=to_base64(data),
        )
        for i, data in enumerate(result.images)
    ]


def _timings(result: Any) -> Timings:
    return Timings(
        queue_s=round(result.queue_s, 4),
        inference_s=round(result.inference_s, 4),
        batch_images=result.batch_images,
    )
