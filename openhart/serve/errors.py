"""The server's JSON error bodies: one shape, a bounded size, and no input values in them.

Every 4xx/5xx answer is ``{"detail": "<field>: <reason>", "errors": [{"field", "message",
"type"}]}``. A client controls what it sends, so an error body may name a field (truncated to
:data:`MAX_FIELD_CHARS`) and give a short reason, but never repeats a value it sent; and however
many things are wrong, the body stays under :data:`MAX_ERROR_BYTES` (the first errors are listed,
the rest counted). The HTTP protocol layer, the request guard and the app all build their bodies
here, so the bound holds for every error the server writes.
"""

from __future__ import annotations

import json

from starlette.responses import Response

MAX_ERROR_BYTES = 4096
MAX_FIELD_CHARS = 64  # a field name longer than this is cut (unknown keys are the client's text)
MAX_LISTED_ERRORS = 10
MAX_MESSAGE_CHARS = 300


def short_field(name: str) -> str:
    """``name`` as an error may show it: printable, at most :data:`MAX_FIELD_CHARS` characters."""
    printable = "".join(c if c.isprintable() else "?" for c in name[: MAX_FIELD_CHARS + 1])
    return printable if len(printable) <= MAX_FIELD_CHARS else printable[: MAX_FIELD_CHARS - 1] + "…"


def error_body(detail: str, errors: list[dict[str, str]] | None = None) -> bytes:
    """The JSON bytes of an error, at most :data:`MAX_ERROR_BYTES` long."""
    errors = errors or []
    listed = [
        {key: str(value)[:MAX_MESSAGE_CHARS] for key, value in error.items()}
        for error in errors[:MAX_LISTED_ERRORS]
    ]
    if len(errors) > MAX_LISTED_ERRORS:
        detail = f"{detail} (and {len(errors) - MAX_LISTED_ERRORS} more errors)"
    detail = detail[:MAX_MESSAGE_CHARS]
    body = json.dumps({"detail": detail, "errors": listed}, ensure_ascii=False).encode()
    # Messages are already cut, so this only drops list entries in a pathological case (ten
    # 300-character messages of multi-byte characters); the detail line always survives.
    while len(body) > MAX_ERROR_BYTES and listed:
        listed.pop()
        body = json.dumps({"detail": detail, "errors": listed}, ensure_ascii=False).encode()
    return body


class ErrorJSONResponse(Response):
    """A JSON error response whose body is built by :func:`error_body`."""

    media_type = "application/json"

    def __init__(
        self,
        status_code: int,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content=error_body(detail, errors), status_code=status_code, headers=headers)


def error_response(
    status: int, detail: str, field: str = "", kind: str = "", headers: dict[str, str] | None = None
) -> ErrorJSONResponse:
    """One error about one field (or none), e.g. ``error_response(413, "body: too large", "body")``."""
    errors = [{"field": field, "message": detail, "type": kind}] if field or kind else []
    return ErrorJSONResponse(status, detail, errors, headers)
