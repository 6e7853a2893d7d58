"""FakeHub: a Hugging Face-compatible file hub on a loopback port, serving real bytes.

It answers the requests ``huggingface_hub.hf_hub_download`` makes, with the headers that client
expects: ``HEAD`` then ``GET /{repo_id}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``
(40 hex), a quoted ``ETag`` (the sha256 of the bytes, like an LFS file), ``Content-Length`` and
``Accept-Ranges``; ``GET`` honours ``Range: bytes=N-`` with a ``206``. Errors carry the
``X-Error-Code`` the client maps to its exceptions: ``GatedRepo`` (401 without a token, 403 with a
wrong one), ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``. It never sends
``X-Xet-Hash`` or a ``Link: rel=xet-auth`` header (they switch the client to Xet transfers).

Scripted behaviour: :meth:`FakeHub.fail_next` (an HTTP status), :meth:`FakeHub.drop_next` (close
the connection after N body bytes), :meth:`FakeHub.stall_next` (send N bytes then wait until the
test releases it), :attr:`FakeHub.latency`. Every request is recorded in :attr:`FakeHub.requests`.

Example::

    from maaskit.testing.fake_hub import FakeHub

    async with FakeHub() as fake:
        fake.add_file("acme/tiny", "model.gguf", b"GGUF...", gated=False)
        hub = DefaultHubService(store, clock, cache_dir=tmp_path, endpoint=fake.endpoint)
        result = await hub.download("acme/tiny", "model.gguf")
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections import deque
from typing import TYPE_CHECKING, Self
from urllib.parse import unquote

import attrs

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["FakeHub", "HubRequest"]

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


@attrs.frozen
class HubRequest:
    """One request the fake received.

    Attributes:
        method: ``HEAD`` or ``GET`` (or anything else that arrived).
        path: the raw URL path.
        repo_id, revision, filename: parsed from a ``/resolve/`` path (``None`` otherwise).
        authorized: whether it carried a bearer token (its value is never recorded).
        range: the ``Range`` header, if any.
    """

    method: str
    path: str
    repo_id: str | None
    revision: str | None
    filename: str | None
    authorized: bool
    range: str | None


@attrs.define
class _File:
    data: bytes
    etag: str
    advertised_size: int | None
    serve: bytes | None  # bytes served instead of ``data`` (integrity tests)


@attrs.define
class _Repo:
    gated: bool = False
    tokens: set[str] = attrs.Factory(set)
    revisions: dict[str, str] = attrs.Factory(dict)  # revision -> commit
    files: dict[tuple[str, str], _File] = attrs.Factory(dict)  # (commit, filename) -> file


@attrs.define
class _Script:
    kind: str  # "status" | "drop" | "stall"
    status: int = 500
    after_bytes: int = 0
    methods: tuple[str, ...] = ("GET",)
    release: asyncio.Event | None = None


def _commit_for(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode(), usedforsecurity=False).hexdigest()


class FakeHub:
    """A loopback hub for tests; use as ``async with FakeHub() as fake``.

    Args:
        host: the loopback address to bind (only ``127.0.0.1`` / ``::1`` / ``localhost``).
        port: ``0`` for a random free port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("FakeHub serves on loopback only")
        self._host = host
        self._port = port
        self._repos: dict[str, _Repo] = {}
        self._scripts: deque[_Script] = deque()
        self._runner: web.AppRunner | None = None
        self._stalled: set[asyncio.Event] = set()
        #: Every request received, in order.
        self.requests: list[HubRequest] = []
        #: Seconds the fake waits before answering each request.
        self.latency: float = 0.0
        self.endpoint: str = ""

    def __repr__(self) -> str:
        return f"FakeHub(endpoint={self.endpoint!r}, repos={len(self._repos)})"

    # -- content -------------------------------------------------------------------------------------

    def add_file(
        self,
        repo_id: str,
        filename: str,
        data: bytes,
        *,
        gated: bool = False,
        token: str | None = None,
        revision: str = "main",
        commit: str | None = None,
        etag: str | None = None,
        advertised_size: int | None = None,
        serve: bytes | None = None,
    ) -> str:
        """Publish *data* as *filename* in *repo_id* at *revision*; returns the commit hash.

        Args:
            gated: the repository needs a bearer token (``token``, default ``"hf_fake_token"``).
            commit: the 40-hex commit the revision resolves to (default: derived from repo and revision).
            etag: the ETag to announce (default: sha256 of *data*).
            advertised_size: the size announced in ``HEAD`` (default: ``len(data)``).
            serve: bytes sent by ``GET`` instead of *data* (to test integrity checks).
        """
        repo = self._repos.setdefault(repo_id, _Repo())
        if gated:
            repo.gated = True
            repo.tokens.add(token or "hf_fake_token")
        commit = commit or repo.revisions.get(revision) or _commit_for(repo_id, revision)
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise ValueError("commit must be 40 lower-case hex digits")
        repo.revisions[revision] = commit
        repo.revisions[commit] = commit
        repo.files[(commit, filename)] = _File(
            data=data,
            etag=etag or hashlib.sha256(data).hexdigest(),
            advertised_size=advertised_size,
            serve=serve,
        )
        return commit

    # -- scripted failures ---------------------------------------------------------------------------

    def fail_next(self, status: int = 500, *, count: int = 1, methods: tuple[str, ...] = ("GET",)) -> None:
        """Answer the next *count* matching requests with *status* (no ``X-Error-Code``)."""
        for _ in range(count):
            self._scripts.append(_Script("status", status=status, methods=methods))

    def drop_next(self, after_bytes: int, *, count: int = 1) -> None:
        """Close the connection of the next *count* GETs after *after_bytes* body bytes."""
        for _ in range(count):
            self._scripts.append(_Script("drop", after_bytes=after_bytes))

    def stall_next(self, after_bytes: int = 0) -> asyncio.Event:
        """Send *after_bytes* of the next GET, then wait until the returned event is set."""
        release = asyncio.Event()
        self._scripts.append(_Script("stall", after_bytes=after_bytes, release=release))
        return release

    def _take_script(self, method: str) -> _Script | None:
        if self._scripts and method in self._scripts[0].methods:
            return self._scripts.popleft()
        return None

    # -- server --------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the endpoint (``http://127.0.0.1:<port>``)."""
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.endpoint = f"http://{host}:{port}"
        return self.endpoint

    async def stop(self) -> None:
        """Stop serving (stalled requests are released)."""
        for event in list(self._stalled):
            event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- request handling ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        raw = request.raw_path.split("?", 1)[0]
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        repo_id = revision = filename = None
        if "/resolve/" in raw:
            repo_part, rest = raw.lstrip("/").split("/resolve/", 1)
            repo_id = unquote(repo_part)
            if "/" in rest:
                rev_part, file_part = rest.split("/", 1)
                revision, filename = unquote(rev_part), unquote(file_part)
        self.requests.append(
            HubRequest(
                method=request.method,
                path=raw,
                repo_id=repo_id,
                revision=revision,
                filename=filename,
                authorized=bearer is not None,
                range=request.headers.get("Range"),
            )
        )
        if self.latency:
            await asyncio.sleep(self.latency)
        script = self._take_script(request.method)
        if script is not None and script.kind == "status":
            return web.Response(status=script.status, text="scripted failure")
        if repo_id is None or revision is None or filename is None or request.method not in ("GET", "HEAD"):
            return _error(404, "RepoNotFound", "Not a resolve URL")
        repo = self._repos.get(repo_id)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if repo.gated:
            if bearer is None:
                return _error(401, "GatedRepo", "Access to this repository is restricted.")
            if not any(hmac.compare_digest(bearer.encode(), t.encode()) for t in repo.tokens):
                return _error(403, "GatedRepo", "Your token has no access to this repository.")
        commit = repo.revisions.get(revision)
        if commit is None:
            return _error(404, "RevisionNotFound", "Invalid rev id")
        file = repo.files.get((commit, filename))
        if file is None:
            return _error(404, "EntryNotFound", "Entry not found")

        body = file.serve if file.serve is not None else file.data
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{file.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if request.method == "HEAD":
            size = file.advertised_size if file.advertised_size is not None else len(file.data)
            headers["Content-Length"] = str(size)
            response = web.StreamResponse(status=200, headers=headers)
            response.content_length = size
            await response.prepare(request)
            await response.write_eof()
            return response

        start, status = 0, 200
        requested = request.headers.get("Range")
        if requested:
            match = _RANGE_RE.match(requested.strip())
            if match is None or int(match.group(1)) >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            start, status = int(match.group(1)), 206
            end = int(match.group(2)) if match.group(2) else len(body) - 1
            body = body[start : min(end, len(body) - 1) + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(file.serve or file.data)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        if script is not None and script.kind == "drop":
            await response.write(body[: script.after_bytes])
            if request.transport is not None:
                request.transport.close()  # a clean close mid-body: the client sees an incomplete message
            return response
        if script is not None and script.kind == "stall" and script.release is not None:
            await response.write(body[: script.after_bytes])
            self._stalled.add(script.release)
            try:
                await script.release.wait()
            finally:
                self._stalled.discard(script.release)
            await response.write(body[script.after_bytes :])
            await response.write_eof()
            return response
        await response.write(body)
        await response.write_eof()
        return response


def _error(status: int, code: str, message: str) -> web.Response:
    from aiohttp import web

    return web.Response(
        status=status,
        headers={"X-Error-Code": code, "X-Error-Message": message},
        text=f'{{"error": "{message}"}}',
        content_type="application/json",
    )
