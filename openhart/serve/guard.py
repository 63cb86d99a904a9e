"""The ASGI middleware in front of every route: what a request must be before the app sees it.

In order, each check answering with a bounded JSON error (:mod:`openhart.serve.errors`):

0. the request line and headers fit :data:`MAX_HEADER_BYTES`, else 431 (h11 bounds headers that
   are still arriving; headers that arrive whole in one read are checked here);
1. the method is one the server speaks (GET, HEAD, POST, OPTIONS), else 405 — TRACE, PUT,
   made-up methods ... never reach a route;
2. the ``Host`` header names an allowed host when ``--allowed-hosts`` is set, else 400 (a page
   on another site that rebinds its DNS name to 127.0.0.1 cannot then talk to the server);
3. an API body is ``application/json`` in UTF-8, or ``multipart/form-data`` on the routes that
   take file uploads (415 otherwise); a form from another site's page is refused (403, below);
   the queue has a free slot (503 before the body is even read), and the body fits its limit
   (413, checked on Content-Length and again while reading, so a huge or endless body costs at
   most the limit in memory);
4. a JSON body is strict JSON: UTF-8, no key twice in an object, not nested past the parser, and
   no top-level field the route does not accept — checked here, on the raw text, so that 80,000
   unknown keys cost one short 422 instead of 80,000 validation errors. A form's parts are
   checked by the route (:mod:`openhart.serve.uploads`), on the body read here.

Why forms from other sites are refused: a browser lets any page post a ``multipart/form-data``
form to any address without asking the server first (a JSON body needs a CORS preflight, which
this server only grants to ``--cors-origin``), so a page on the web could make a local server
work for it. Browsers name the posting page's origin in ``Origin``; a form is accepted when that
header is absent (curl, scripts), names this server itself, or is an allowed CORS origin.

The body is then replayed to the app, which validates the values (pydantic). Reading stalls are
not handled here: the HTTP protocol (:mod:`openhart.serve.protocol`) closes a connection whose
headers or body do not arrive in time.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from openhart.serve.errors import MAX_LISTED_ERRORS, ErrorJSONResponse, error_response, short_field

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

ALLOWED_METHODS = ("GET", "HEAD", "POST", "OPTIONS")  # OPTIONS: CORS preflights
JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "multipart/form-data"
MAX_HEADER_BYTES = 16 * 1024  # request line + headers; the page and the API need well under 2 KiB
BODY_METHODS = ("POST", "PUT", "PATCH")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys; a proxy or a logger in front may keep the first,
    # so the two would disagree on what was asked. Refusing both is the only unambiguous answer.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def parse_strict_json(body: bytes) -> Any:
    """The JSON value of ``body``; ValueError with a reason that does not quote the body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not valid UTF-8 (at byte {error.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except DuplicateKey as error:
        raise ValueError(f"the key '{short_field(error.key)}' appears twice in one object") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"malformed JSON ({error.msg} at position {error.pos})") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        raise ValueError("a number has too many digits") from None


def host_allowed(host_header: bytes, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``Host`` names one of ``allowed_hosts`` ("*.example.com" also allows subdomains)."""
    host = host_header.decode("latin-1").strip().lower()
    # Drop the port; an IPv6 literal keeps its brackets: [::1]:7860 → [::1].
    host = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
    for pattern in allowed_hosts:
        pattern = pattern.lower()
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def media_type_and_charset(content_type: bytes) -> tuple[bytes, bytes | None]:
    """(lower-case media type, lower-case charset or None) of a Content-Type header."""
    media_type, *parameters = content_type.split(b";")
    charset = None
    for parameter in parameters:
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"charset":
            charset = value.strip().strip(b'"').lower()
    return media_type.strip().lower(), charset


class RequestGuard:
    """ASGI middleware: the checks of the module docstring, then the app with the body replayed.

    ``path_body_bytes`` gives routes a larger body limit (the edit's images); ``path_fields`` the
    top-level fields each JSON route accepts; ``path_form_uploads`` the routes that also take
    multipart/form-data; ``allowed_origins`` the CORS origins whose pages may post those forms;
    ``refuse_if_full`` a queue-full error or None.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        refuse_if_full: Callable[[], Exception | None] | None = None,
        full_response: Callable[[Any], ErrorJSONResponse] | None = None,
        path_body_bytes: Mapping[str, int] | None = None,
        path_fields: Mapping[str, frozenset[str]] | None = None,
        allowed_hosts: tuple[str, ...] = (),
        path_form_uploads: frozenset[str] = frozenset(),
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.refuse_if_full = refuse_if_full
        self.full_response = full_response
        self.path_body_bytes = dict(path_body_bytes or {})
        self.path_fields = dict(path_fields or {})
        self.allowed_hosts = allowed_hosts
        self.path_form_uploads = path_form_uploads
        self.allowed_origins = tuple(origin.rstrip("/").lower() for origin in allowed_origins)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        async def answer(response: ErrorJSONResponse) -> None:
            await response(scope, receive, send_with_headers)

        header_bytes = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        header_bytes += sum(len(name) + len(value) + 4 for name, value in scope.get("headers", []))
        if header_bytes > MAX_HEADER_BYTES:
            detail = f"headers: larger than the limit of {MAX_HEADER_BYTES} bytes"
            await answer(error_response(431, detail, "headers", "headers_too_large"))
            return
        method = scope["method"]
        if method not in ALLOWED_METHODS:
            allow = {"Allow": ", ".join(ALLOWED_METHODS)}
            await answer(error_response(405, "method: not allowed", "method", "method_not_allowed", allow))
            return
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        if self.allowed_hosts and not host_allowed(headers.get(b"host", b""), self.allowed_hosts):
            await answer(error_response(400, "host: not an allowed host of this server", "host", "bad_host"))
            return
        if method not in BODY_METHODS:
            await self.app(scope, receive, send_with_headers)
            return

        path = scope["path"]
        media_type, charset = media_type_and_charset(headers.get(b"content-type", b""))
        is_form = media_type == FORM_MEDIA_TYPE.encode() and path in self.path_form_uploads
        if path.startswith("/api/") and not is_form:
            if media_type != JSON_MEDIA_TYPE.encode():
                expected = JSON_MEDIA_TYPE + (
                    f" or {FORM_MEDIA_TYPE}" if path in self.path_form_uploads else ""
                )
                await answer(
                    error_response(415, f"content-type: expected {expected}", "content-type", "media_type")
                )
                return
            if charset not in (None, b"utf-8", b"utf8"):
                await answer(
                    error_response(415, "content-type: the charset must be utf-8", "content-type", "charset")
                )
                return
        if is_form and not self._origin_may_post_forms(headers):
            detail = "origin: forms posted from another site's page are refused (see --cors-origin)"
            await answer(error_response(403, detail, "origin", "cross_site_form"))
            return
        if path in self.path_fields and self.refuse_if_full is not None and self.full_response is not None:
            full = self.refuse_if_full()
            if full is not None:  # 503 before the body is read or validated: cheap under a flood
                await answer(self.full_response(full))
                return
        limit = self.path_body_bytes.get(path, self.max_body_bytes)
        too_large = error_response(
            413, f"body: larger than the limit of {limit} bytes", "body", "body_too_large"
        )
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await answer(too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await answer(too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        fields = self.path_fields.get(path)
        if fields is not None and body and not is_form:  # an empty body is left to the app: "body: required"
            try:
                value = parse_strict_json(body)
            except ValueError as error:
                await answer(error_response(400, f"body: {error}", "body", "body_unparsable"))
                return
            if isinstance(value, dict):
                unknown = [key for key in value if key not in fields]
                if unknown:
                    await answer(_unknown_fields(unknown))
                    return

        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    def _origin_may_post_forms(self, headers: Mapping[bytes, bytes]) -> bool:
        """Whether a form may come from the page named by ``Origin`` (the module docstring's why)."""
        origin = headers.get(b"origin")
        if origin is None:  # not a browser page: curl, a script
            return True
        origin_text = origin.decode("latin-1").strip().rstrip("/").lower()
        if origin_text in self.allowed_origins:
            return True
        # Same origin: the page's host[:port] is the Host this request was sent to. "null" (a
        # sandboxed frame, a file:// page) is never the same origin.
        scheme, separator, authority = origin_text.partition("://")
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        return bool(separator) and scheme in ("http", "https") and authority == host


def _unknown_fields(unknown: list[str]) -> ErrorJSONResponse:
    # Only the first few are named: the count is what tells a client its body is wrong.
    names = [short_field(key) for key in unknown[:MAX_LISTED_ERRORS]]
    hint = "see GET /openapi.json for the accepted fields"
    errors = [
        {"field": name, "message": f"{name}: unknown field", "type": "extra_forbidden"} for name in names
    ]
    if len(unknown) == 1:
        detail = f"{names[0]}: unknown field ({hint})"
    else:
        shown = ", ".join(names[:3]) + (", ..." if len(unknown) > 3 else "")
        detail = f"{len(unknown)} unknown fields: {shown} ({hint})"
    return ErrorJSONResponse(422, detail, errors)
