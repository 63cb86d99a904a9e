"""A stand-in Hugging Face Hub on 127.0.0.1 that answers the real ``huggingface_hub`` client.

It serves the few routes ``snapshot_download`` and ``list_repo_files`` use, with huggingface.co's
status codes and headers, so the client runs its own code paths (errors, tree listing, HEAD for
the ETag, streamed GET into an ``*.incomplete`` file, blobs named by ETag) with no mock:

- ``GET /api/models/ORG/NAME/revision/REV``: the repository's commit (``sha``) and files;
- ``GET /api/models/ORG/NAME/tree/REV``: the recursive file listing (sizes, git blob ids);
- ``HEAD|GET /ORG/NAME/resolve/REV/PATH``: a file, with ``X-Repo-Commit``, an ``ETag`` that is the
  SHA-256 of its bytes (as for LFS files, so a cached blob's name is the hash of its content) and
  ``Range`` support;
- errors as ``X-Error-Code``: ``RepoNotFound``, ``GatedRepo`` (403), ``RevisionNotFound``,
  ``EntryNotFound``.

``downloads`` records every file whose bytes were sent (``ORG/NAME/PATH``), so a test can tell
which files a rerun fetched again. ``cut_after`` (``ORG/NAME/PATH`` → a byte offset into that file)
loses the connection mid-body: a GET of that file gets its headers, with the ``Content-Length`` of
the whole answer, and the bytes before the offset, then the server closes the socket. Every try
fails so, a resumed one (``Range``) included, until the entry is removed.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<route>revision|tree)/(?P<revision>[^/]+)")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
_CHUNK_BYTES = 64 * 1024


class StandInHub(ThreadingHTTPServer):
    """Serves ``repos`` (repo id → (commit, {path: bytes})) on a free port of 127.0.0.1."""

    def __init__(self, repos: dict[str, tuple[str, dict[str, bytes]]], gated: set[str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.gated = gated
        self.downloads: list[str] = []
        self.cut_after: dict[str, int] = {}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """What ``HF_ENDPOINT`` (or ``huggingface_hub.constants.ENDPOINT``) is set to."""
        return f"http://127.0.0.1:{self.server_port}"

    def start(self) -> StandInHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()


def _git_blob_id(data: bytes) -> str:
    """The id git (and the Hub's tree listing) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: StandInHub

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def _answer(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        match = _API.fullmatch(path) or _RESOLVE.fullmatch(path)
        if match is None:
            return self._fail(404, "RepoNotFound")
        repo = match["repo"]
        if repo in self.server.gated:
            return self._fail(403, "GatedRepo")
        if repo not in self.server.repos:
            return self._fail(404, "RepoNotFound")
        commit, files = self.server.repos[repo]
        if match["revision"] not in ("main", commit):
            return self._fail(404, "RevisionNotFound")
        if match.re is _API:
            payload = self._info(repo, commit, files) if match["route"] == "revision" else self._tree(files)
            body = json.dumps(payload).encode()
            return self._send(200, {"Content-Type": "application/json"}, body, send_body)
        name = match["path"]
        if name not in files:
            return self._fail(404, "EntryNotFound", {"X-Repo-Commit": commit})
        return self._send_file(repo, commit, name, files[name], send_body)

    @staticmethod
    def _info(repo: str, commit: str, files: dict[str, bytes]) -> dict:
        return {"id": repo, "sha": commit, "siblings": [{"rfilename": name} for name in sorted(files)]}

    @staticmethod
    def _tree(files: dict[str, bytes]) -> list[dict]:
        folders = {str(parent) for name in files for parent in PurePosixPath(name).parents} - {"."}
        entries = [{"type": "directory", "oid": _git_blob_id(f.encode()), "path": f} for f in sorted(folders)]
        entries += [
            {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": name}
            for name, data in sorted(files.items())
        ]
        return entries

    def _send_file(self, repo: str, commit: str, name: str, data: bytes, send_body: bool) -> None:
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
        }
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if requested and int(requested[1]) < len(data):
            start = int(requested[1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if send_body:
            self.server.downloads.append(f"{repo}/{name}")
        cut = self.server.cut_after.get(f"{repo}/{name}") if send_body else None
        cut_at = None if cut is None else max(cut - start, 0)  # the offset within this answer's body
        self._send(206 if start else 200, headers, data[start:], send_body, cut_at)

    def _fail(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"X-Error-Code": code, **(headers or {})}, b"", send_body=False)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, send_body: bool, cut_at: int | None = None
    ) -> None:
        """Answer with ``body``; with ``cut_at``, only its first ``cut_at`` bytes, then the connection is lost."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        sent = body if cut_at is None else body[:cut_at]
        try:
            for offset in range(0, len(sent), _CHUNK_BYTES):
                self.wfile.write(sent[offset : offset + _CHUNK_BYTES])
            if cut_at is not None:
                # Fewer bytes than Content-Length announced, then the end of the stream: the client
                # reads a body cut short, as when a connection drops.
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (its write failed): what a real server shrugs off
