"""uvicorn's h11 protocol with deadlines on reading a request and a cap on open connections.

uvicorn bounds an *idle* keep-alive connection (``timeout_keep_alive``), but every byte received
cancels that timer and nothing re-arms it, so a client that sends its headers, or a body shorter
than its Content-Length, one byte at a time holds the connection (and a file descriptor) forever.
This subclass keeps one deadline per connection, set from h11's view of the client:

- waiting for a request (h11 ``IDLE``: connected, or the previous response sent): the headers must
  be complete within ``header_timeout_s``, however the bytes trickle in;
- reading a body (h11 ``SEND_BODY``): the body must be complete within ``body_timeout_s`` of the
  headers, whether or not the app is still reading it (an early 413 or 503 included);
- otherwise (the app is working on a complete request) no deadline: ``--timeout`` bounds that.

A connection past its deadline gets a JSON 408 if no response was started (then, or silently when
it sent nothing at all, it is closed). Beyond ``max_connections`` open connections a new one gets a
JSON 503 and is closed at once, so slow clients cannot exhaust file descriptors. Malformed HTTP
gets a JSON 400 instead of uvicorn's plain text. The bodies come from :mod:`openhart.serve.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from openhart.serve.errors import error_body


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """What one HTTP connection may cost the server.

    header_timeout_s: from connecting (or from the previous response) to complete request headers.
    body_timeout_s: from complete headers to the body's last byte.
    keep_alive_s: an idle connection is closed after this long without a byte (uvicorn's timer).
    max_connections: open connections at once; one more gets 503 and is closed.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 5.0
    max_connections: int = 128

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        value = self.max_connections
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {value!r}")


class GuardedH11Protocol(H11Protocol):
    """One connection; see the module docstring. uvicorn builds it with ``config.http`` set to
    ``functools.partial(GuardedH11Protocol, limits=...)``."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._phase: str | None = None  # "headers", "body" or None: what the deadline waits for
        self._deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        crowded = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if crowded:
            self.logger.warning("refused a connection: %d open already", len(self.connections) - 1)
            self._answer_and_close(
                503,
                "connection: too many open connections; retry shortly",
                "too_many_connections",
                [(b"retry-after", b"1")],
            )
            return
        self._follow_client()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_client()

    def send_400_response(self, msg: str) -> None:
        # Called by uvicorn when h11 refuses the bytes (bad request line, headers too large, ...).
        self._answer_and_close(400, "request: malformed HTTP/1.1", "bad_request")

    # ------------------------------------------------------------------ deadlines
    def _follow_client(self) -> None:
        """Start the deadline of what h11 now waits for from the client, if it changed."""
        if self.transport is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._set_deadline(phase)

    def _set_deadline(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            seconds = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
            self._deadline = self.loop.call_later(seconds, self._on_deadline, phase)

    def _on_deadline(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        received_some = bool(self.conn.trailing_data[0])
        if phase == "headers" and not received_some:
            self._close()  # connected and said nothing: nothing to answer
            return
        self.logger.info("closing a connection whose request %s did not arrive in time", phase)
        cycle = self.cycle if phase == "body" else None
        if cycle is not None and not cycle.response_started:
            # The app may be waiting on receive(): it now gets http.disconnect and writes nothing.
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle is None or not cycle.response_started:
            seconds = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
            self._answer_and_close(
                408, f"request: the {phase} did not arrive within {seconds:g} s", "request_timeout"
            )
        else:
            self._close()

    # ------------------------------------------------------------------ answers
    def _answer_and_close(
        self, status: int, detail: str, kind: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = error_body(detail, [{"field": detail.split(":")[0], "message": detail, "type": kind}])
        response = h11.Response(
            status_code=status,
            reason=STATUS_PHRASES[status],
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"x-content-type-options", b"nosniff"),
                *(headers or []),
            ],
        )
        try:
            output = self.conn.send(response)
            output += self.conn.send(h11.Data(data=body))
            output += self.conn.send(h11.EndOfMessage())
            self.transport.write(output)
        except h11.LocalProtocolError:
            pass  # h11 cannot start a response now (one is under way): closing is all that is left
        self._close()

    def _close(self) -> None:
        self._set_deadline(None)
        if not self.transport.is_closing():
            self.transport.close()
