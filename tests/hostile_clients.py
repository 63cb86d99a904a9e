"""Hostile HTTP clients for ``openhart serve``, over raw sockets: shared by the tests and the benchmark.

- :func:`slowloris`: sockets that trickle partial headers, a body shorter than its Content-Length,
  or a chunked body announcing 2**64 bytes, one byte at a time; reports when the server closed each.
- :data:`HOSTILE_REQUESTS`: complete requests that must each get a small JSON 4xx, none quoting
  the :data:`MARKER` planted in their values.
- :data:`FUZZ_BODIES`, :data:`CONTENT_TYPES`: Hypothesis strategies of request bodies and types.
- :func:`exchange`: one raw request → (status, headers, body), the server's answer as sent.
- :func:`rss_bytes`, :func:`open_sockets`: a process's resident memory and socket count (/proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from dataclasses import dataclass

from hypothesis import strategies as st

from openhart.serve.schema import MAX_SEED

MARKER = "QZXJ7MARKER"  # planted in request values; an error body that contains it echoed the input


@dataclass
class SlowClientReport:
    clients: int
    closed_by_server: int
    held_past_deadline: int  # still open when the deadline + grace had passed
    longest_open_s: float  # connect → the server's answer or close, over the sockets it closed
    answers: dict[str, int]  # first line of the server's answer → count ("" = closed silently)


def _slow_request(kind: str, index: int) -> tuple[bytes, bytes]:
    """(what is sent at once, what is then trickled a byte at a time) for one slow client."""
    host = b"Host: 127.0.0.1\r\n"
    if kind == "headers":  # headers that never end
        return b"GET /health HTTP/1.1\r\n" + host, f"X-Slow-{index}: ".encode() + b"a" * 10_000
    if kind == "body":  # a body that stays shorter than its Content-Length
        head = (
            b"POST /api/generate HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        return head, b'{"prompt": "' + b"a" * 99_000
    # a chunked body announcing 2**64 bytes
    head = (
        b"POST /api/generate HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n"
    )
    return head, b"a" * 100_000


def slowloris(
    port: int, clients: int, deadline_s: float, grace_s: float = 1.5, byte_every_s: float = 0.2
) -> SlowClientReport:
    """Open ``clients`` slow connections (a third of each kind) and trickle bytes for
    ``deadline_s + grace_s``; count those the server has not closed by then."""
    kinds = ("headers", "body", "chunked")
    sockets: list[socket.socket] = []
    pending: list[bytes] = []
    opened: list[float] = []
    for index in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        head, rest = _slow_request(kinds[index % 3], index)
        sock.sendall(head)
        sock.setblocking(False)
        sockets.append(sock)
        pending.append(rest)
        opened.append(time.monotonic())
    closed_at: dict[int, float] = {}
    answered_at: dict[int, float] = {}
    answers: dict[int, bytes] = {}
    stop = opened[-1] + deadline_s + grace_s
    while time.monotonic() < stop and len(closed_at) < clients:
        for index, sock in enumerate(sockets):
            if index in closed_at:
                continue
            try:
                if _drain(sock, index, answers):
                    closed_at[index] = answered_at.get(index, time.monotonic())
                    continue
                if index in answers and index not in answered_at:
                    answered_at[index] = time.monotonic()
                if pending[index]:
                    sent = sock.send(pending[index][:1])
                    pending[index] = pending[index][sent:]
            except OSError:  # reset or broken pipe: the server closed it
                closed_at[index] = time.monotonic()
        time.sleep(byte_every_s)
    for index, sock in enumerate(sockets):  # the sweep loop is slow with hundreds: a last look now
        if index not in closed_at:
            with contextlib.suppress(OSError):
                if _drain(sock, index, answers):
                    closed_at[index] = answered_at.get(index, time.monotonic())
        sock.close()
    first_lines: dict[str, int] = {}
    for index in range(clients):
        line = answers.get(index, b"").split(b"\r\n", 1)[0].decode("latin-1")
        first_lines[line] = first_lines.get(line, 0) + 1
    return SlowClientReport(
        clients=clients,
        closed_by_server=len(closed_at),
        held_past_deadline=clients - len(closed_at),
        longest_open_s=max((closed_at[i] - opened[i] for i in closed_at), default=0.0),
        answers=first_lines,
    )


def _drain(sock: socket.socket, index: int, answers: dict[int, bytes]) -> bool:
    """Read what ``sock`` has into ``answers[index]``; True once the server has closed it."""
    while select.select([sock], [], [], 0)[0]:
        data = sock.recv(65536)
        if not data:
            return True
        answers[index] = answers.get(index, b"") + data
    return False


def exchange(port: int, request: bytes, timeout_s: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on a new connection and read the answer until the server closes it (the
    requests below say ``Connection: close``) or its Content-Length is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        # The server may answer and close before reading it all (a 413): the answer is still there.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            head, separator, body = data.partition(b"\r\n\r\n")
            if separator:
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"content-length:")
                ]
                if lengths and len(body) >= lengths[0]:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """A well-framed HTTP/1.1 request with ``Connection: close`` (for :func:`exchange`)."""
    fields = {"Host": host, "Connection": "close", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def post_json(
    text: str | bytes, path: str = "/api/generate", content_type: str = "application/json"
) -> bytes:
    body = text.encode() if isinstance(text, str) else text
    return http_request("POST", path, body, {"Content-Type": content_type})


def _obj(**fields: object) -> str:
    return json.dumps({"prompt": "a red fox", **fields})


# name → raw request. Every one is complete, so each must be answered at once with a JSON 4xx.
HOSTILE_REQUESTS: dict[str, bytes] = {
    "80,000 unknown keys in 1 MB": post_json(
        json.dumps({"prompt": MARKER, **{f"k{i}": 0 for i in range(80_000)}}, separators=(",", ":"))
    ),
    "one unknown key of 10**6 characters": post_json(json.dumps({"prompt": "a", "k" * 1_000_000: MARKER})),
    "unknown keys nested 1000 deep": post_json(
        '{"prompt": "a", "x": ' + '{"y": ' * 1000 + f'"{MARKER}"' + "}" * 1000 + "}"
    ),
    "prompt of 100k characters": post_json(_obj(prompt=MARKER * 10_000)),
    "negative prompt of 100k characters": post_json(_obj(negative_prompt=MARKER * 10_000)),
    "prompt is an object of 10,000 keys": post_json(_obj(prompt={f"{MARKER}{i}": i for i in range(10_000)})),
    "prompt is a list of 60,000 strings": post_json(_obj(prompt=[MARKER] * 60_000)),
    "body is a list of 50,000 items": post_json(json.dumps([MARKER] * 50_000)),
    "format is a long string": post_json(_obj(format=MARKER * 1000)),
    "seed is a long string": post_json(_obj(seed=MARKER * 1000)),
    "seed past 2**32": post_json(_obj(seed=2**40)),
    "duplicate keys": post_json('{"prompt": "a", "prompt": "' + MARKER + '"}'),
    "duplicate nested keys": post_json('{"prompt": {"a": 1, "a": "' + MARKER + '"}}'),
    "JSON nested 100k deep": post_json("[" * 100_000 + "]" * 100_000),
    "5000-digit integer": post_json('{"prompt": "a", "seed": ' + "9" * 5000 + "}"),
    "invalid UTF-8": post_json(b'{"prompt": "' + MARKER.encode() + b'\xff\xfe"}'),
    "malformed JSON after a marker": post_json('{"prompt": "' + MARKER + '",,}'),
    "charset latin-1": post_json(_obj(), content_type="application/json; charset=latin-1"),
    "charset utf-16": post_json(_obj().encode("utf-16"), content_type="application/json; charset=utf-16"),
    "content-type with a 2000-character charset": post_json(
        _obj(), content_type="application/json; charset=" + MARKER * 200
    ),
    "content-type text/plain": post_json(_obj(), content_type=f"text/{MARKER}"),
    "2 MB body": post_json(_obj(prompt="a" * 2_000_000)),
    "Content-Length of 10**18, no body": http_request(
        "POST", "/api/generate", headers={"Content-Type": "application/json", "Content-Length": "10" * 9}
    ),
    "edit: 1 MB of non-base64": post_json(json.dumps({"prompt": "a", "image": "*" * 1_000_000}), "/api/edit"),
    "edit: base64 of a text file": post_json(
        json.dumps({"prompt": "a", "image": "UVpYSjdNQVJLRVIgaXMgbm90IGFuIGltYWdl"}), "/api/edit"
    ),
    "TRACE": http_request("TRACE", "/api/generate"),
    "PUT": http_request("PUT", "/api/generate", _obj().encode(), {"Content-Type": "application/json"}),
    "DELETE": http_request("DELETE", "/health"),
    "made-up method": http_request("BREW", "/"),
    "slash redirect with a foreign Host": http_request("GET", "/api/generate/", host="evil.example"),
    "POST with a foreign Host and a slash": http_request(
        "POST", "/api/generate/", _obj().encode(), {"Content-Type": "application/json"}, host="evil.example"
    ),
    "path of 10,000 characters": http_request("GET", "/" + MARKER * 900),
    "query of 10,000 characters": http_request("GET", "/api/nothing?q=" + MARKER * 900),
    "path traversal": http_request("GET", "/static/..%2f..%2fetc%2fpasswd"),
    "malformed request line": b"GARBAGE " + MARKER.encode() + b"\r\n\r\n",
    "header without a colon": b"GET / HTTP/1.1\r\nHost: a\r\n" + MARKER.encode() + b"\r\n\r\n",
    "headers of 40 KB": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + MARKER.encode() * 4000 + b"\r\n\r\n",
    "Content-Length not a number": b"POST /api/generate HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    "two Content-Lengths": (
        b"POST /api/generate HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n{}"
    ),
    "bad chunk size": (
        b"POST /api/generate HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n"
    ),
}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = {
    "prompt": st.text(max_size=30) | JSON_VALUES,
    "negative_prompt": st.none() | st.text(max_size=20) | JSON_VALUES,
    "seed": st.none() | st.integers(min_value=-2, max_value=2**33) | JSON_VALUES,
    "guidance_scale": st.floats(min_value=-1, max_value=30) | JSON_VALUES,
    "steps": st.none() | st.integers(min_value=-1, max_value=3) | JSON_VALUES,
    "num_images": st.integers(min_value=-1, max_value=5) | JSON_VALUES,
    "format": st.sampled_from(["base64", "png", "jpeg", "gif", ""]) | JSON_VALUES,
    "image": st.text(max_size=40) | JSON_VALUES,
    "mask": st.none() | st.text(max_size=40),
    "strength": st.floats(min_value=-1, max_value=2) | JSON_VALUES,
    "paste_back": st.booleans() | JSON_VALUES,
}
# Request bodies for a property-based fuzz (Hypothesis): JSON of any shape, fields of any type,
# raw bytes; and valid bodies (a few with one field from FIELDS instead), so that the fuzz also reaches the model.
VALID_BODIES = st.fixed_dictionaries(
    {
        "prompt": st.text(min_size=1, max_size=30).filter(str.strip),
        "steps": st.integers(min_value=1, max_value=2),
    },
    optional={
        "negative_prompt": st.none() | st.text(max_size=20),
        "seed": st.none() | st.integers(min_value=0, max_value=MAX_SEED),
        "guidance_scale": st.floats(min_value=0, max_value=20),
        "num_images": st.integers(min_value=1, max_value=4),
    },
)
FUZZ_BODIES = (
    VALID_BODIES.map(lambda body: json.dumps(body).encode())
    | st.tuples(VALID_BODIES, st.sampled_from(sorted(FIELDS)), JSON_VALUES).map(
        lambda case: json.dumps({**case[0], case[1]: case[2]}).encode()
    )
    | st.fixed_dictionaries({}, optional=FIELDS).map(lambda body: json.dumps(body).encode())
    | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5).map(
        lambda body: json.dumps(body).encode()
    )
    | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=100)
)
CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 6
    + ["application/json; charset=utf-8", "application/json; charset=latin-1", "text/plain"]
)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_sockets(pid: int) -> int:
    """Sockets process ``pid`` holds (its listening socket included)."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed while listing
    return count
