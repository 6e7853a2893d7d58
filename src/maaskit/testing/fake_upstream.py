"""FakeUpstream: an OpenAI-compatible upstream for tests, in-process or on a loopback port.

It is a real implementation of the HTTP interface maaskit forwards to, not a mock of maaskit's
own classes: the same request handler answers through ``httpx.MockTransport`` (in-process,
no socket) and through an ``aiohttp.web`` server on ``127.0.0.1`` (process-level tests, and the
aiohttp data-plane transport).

Routes (under ``/v1``; the bare paths work too)::

    POST /v1/chat/completions   whole answer with "usage", or SSE when "stream": true
                                (role chunk, one chunk per word, finish chunk, a usage chunk when
                                stream_options.include_usage is set, then "data: [DONE]")
    POST /v1/embeddings         deterministic vectors, "usage"
    GET  /v1/models             the configured models
    GET  /health                "ok" (no key needed)

Every ``/v1`` route checks ``Authorization: Bearer <api_key>``. Scripted behaviour:
:meth:`FakeUpstream.fail_next` (status, ``Retry-After``, body), :meth:`FakeUpstream.refuse_next`
(connection refused / dropped before an answer), :meth:`FakeUpstream.drop_next_stream`
(connection dropped mid-stream), :meth:`FakeUpstream.hold_stream` (pause a stream until the test
says go), :attr:`FakeUpstream.latency` and :attr:`FakeUpstream.omit_usage`. Every request is
recorded in :attr:`FakeUpstream.requests`.

Example::

    import httpx
    from maaskit.services.ai_api import DefaultAiApiService
    from maaskit.services.upstream import HttpxTransport, Upstream
    from maaskit.testing.fake_upstream import FakeUpstream

    fake = FakeUpstream(api_key="sk-test")
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()))
    ai = DefaultAiApiService(Upstream(name="fake", base_url=fake.base_url, api_key="sk-test"), transport)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    result = await ai.chat_completion(body)

    async with fake.serve() as base_url:        # http://127.0.0.1:<port>/v1
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import httpx
    from aiohttp import web

__all__ = ["FakeReply", "FakeUpstream", "RecordedRequest"]

_JSON = {"content-type": "application/json"}
_SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}


class _StreamDropped(Exception):
    """Raised inside a reply's chunk iterator to drop the connection."""


class _Refused(Exception):
    """Raised by the handler to refuse / drop the connection before any answer."""


@attrs.frozen
class RecordedRequest:
    """One request the fake received.

    Attributes:
        method: HTTP method.
        path: the URL path (``/v1/chat/completions``).
        headers: lower-cased request headers, ``authorization`` removed.
        authorized: whether it carried the configured bearer key.
        body: the raw body bytes.
        json: the parsed JSON body (``None`` if absent or not JSON).
        host: the ``Host`` header the request was sent to.
    """

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    authorized: bool
    body: bytes = attrs.field(repr=False)
    json: Any = attrs.field(repr=False)
    host: str | None = None


@attrs.define
class FakeReply:
    """An answer of the fake: status, headers and a whole body or an async chunk iterator."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


@attrs.define
class _Failure:
    status: int
    retry_after: str | None
    body: bytes | None
    refuse: bool = False


def _error(status: int, message: str, type_: str, code: str | None = None) -> FakeReply:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return FakeReply(status, dict(_JSON), json.dumps(body).encode())


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


class FakeUpstream:
    """An OpenAI-compatible upstream with scripted failures (see the module docs).

    Args:
        api_key: the bearer key requests must carry.
        models: model ids the fake serves; others get a 404 ``model_not_found``.
        reply: the assistant's answer (streamed one word per chunk).
        embedding_dimensions: length of each embedding vector.
        latency: seconds to wait before answering each API request.
        sleep: the coroutine used to wait (``asyncio.sleep``).
    """

    base_url = "http://fake-upstream.test/v1"

    def __init__(
        self,
        *,
        api_key: str = "sk-fake-upstream",
        models: Iterable[str] = ("fake-model",),
        reply: str = "Hello from the fake upstream.",
        embedding_dimensions: int = 8,
        latency: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api_key = api_key
        self._auth = f"Bearer {api_key}"
        self.models: list[str] = list(models)
        self.reply = reply
        self.embedding_dimensions = embedding_dimensions
        self.latency = latency
        self.omit_usage = False
        self.requests: list[RecordedRequest] = []
        self._sleep = sleep
        self._failures: deque[_Failure] = deque()
        self._drops: deque[int] = deque()
        self._holds: deque[tuple[int, asyncio.Event]] = deque()
        self._held: set[asyncio.Event] = set()

    def __repr__(self) -> str:
        return f"FakeUpstream(models={self.models!r})"

    # -- scripting ------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        *,
        retry_after: float | str | None = None,
        times: int = 1,
        body: bytes | None = None,
    ) -> None:
        """Answer the next *times* API requests with *status* (and a ``Retry-After`` header)."""
        value = None if retry_after is None else str(retry_after)
        for _ in range(times):
            self._failures.append(_Failure(status, value, body))

    def refuse_next(self, times: int = 1) -> None:
        """Fail the next *times* API requests without an answer.

        In-process this raises ``httpx.ConnectError`` (connection refused); on the loopback
        server the connection is closed before any answer.
        """
        for _ in range(times):
            self._failures.append(_Failure(0, None, None, refuse=True))

    def drop_next_stream(self, after_chunks: int = 1) -> None:
        """Drop the connection of the next stream after *after_chunks* events were sent."""
        self._drops.append(after_chunks)

    def hold_stream(self, after_chunks: int = 1) -> asyncio.Event:
        """Pause the next stream after *after_chunks* events until the returned event is set."""
        event = asyncio.Event()
        self._holds.append((after_chunks, event))
        return event

    def reset(self) -> None:
        """Forget recorded requests and scripted behaviour."""
        self.requests.clear()
        self._failures.clear()
        self._drops.clear()
        self._holds.clear()
        self.latency = 0.0
        self.omit_usage = False

    # -- the HTTP interface -----------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> FakeReply:
        """Answer one request (the transport-independent core of the fake)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        authorized = lowered.pop("authorization", None) == self._auth
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, RecursionError):
            parsed = None
        self.requests.append(
            RecordedRequest(method, path, lowered, authorized, body, parsed, lowered.get("host"))
        )
        if path in ("/health", "/v1/health"):
            return FakeReply(200, {"content-type": "text/plain"}, b"ok")
        route = path[3:] if path.startswith("/v1/") else path
        if route not in ("/chat/completions", "/embeddings", "/models"):
            return _error(404, f"Unknown route {path}", "invalid_request_error", "not_found")
        if self.latency > 0:
            await self._sleep(self.latency)
        if self._failures:
            failure = self._failures.popleft()
            if failure.refuse:
                raise _Refused
            reply = _error(failure.status, f"Scripted failure {failure.status}", "server_error")
            if failure.body is not None:
                reply.body = failure.body
            if failure.retry_after is not None:
                reply.headers["retry-after"] = failure.retry_after
            return reply
        if not authorized:
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if route == "/models":
            if method != "GET":
                return _error(405, "Method not allowed", "invalid_request_error")
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
            return FakeReply(200, dict(_JSON), json.dumps({"object": "list", "data": data}).encode())
        if method != "POST":
            return _error(405, "Method not allowed", "invalid_request_error")
        if not isinstance(parsed, dict):
            return _error(400, "The body must be a JSON object.", "invalid_request_error")
        model = parsed.get("model")
        if not isinstance(model, str) or model not in self.models:
            return _error(
                404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found"
            )
        if route == "/embeddings":
            return self._embeddings(parsed, model)
        messages = parsed.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty list.", "invalid_request_error")
        prompt_tokens = self.prompt_tokens(messages)
        if parsed.get("stream") is True:
            options = parsed.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return FakeReply(200, dict(_SSE), chunks=self._stream(model, prompt_tokens, include_usage))
        return self._completion(model, prompt_tokens)

    @staticmethod
    def prompt_tokens(messages: list[Any]) -> int:
        """The fake's own prompt count: words in the messages plus 2 per message."""
        words = 0
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                words += len(message["content"].split())
        return words + 2 * len(messages)

    @property
    def completion_tokens(self) -> int:
        """The fake's completion count: the words of :attr:`reply`."""
        return len(_words(self.reply))

    def _usage(self, prompt_tokens: int) -> dict[str, int]:
        completion = self.completion_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def _completion(self, model: str, prompt_tokens: int) -> FakeReply:
        obj: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}
            ],
        }
        if not self.omit_usage:
            obj["usage"] = self._usage(prompt_tokens)
        return FakeReply(200, dict(_JSON), json.dumps(obj, separators=(",", ":")).encode())

    def _embeddings(self, parsed: dict[str, Any], model: str) -> FakeReply:
        inputs = parsed.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            return _error(400, "'input' must be a string or a list of strings.", "invalid_request_error")
        data = []
        for index, text in enumerate(items):
            digest = hashlib.sha256(text.encode()).digest()
            vector = [
                round(digest[i % len(digest)] / 127.5 - 1.0, 6) for i in range(self.embedding_dimensions)
            ]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        obj: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not self.omit_usage:
            tokens = sum(len(t.split()) for t in items)
            obj["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return FakeReply(200, dict(_JSON), json.dumps(obj, separators=(",", ":")).encode())

    async def _stream(self, model: str, prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
        drop_after = self._drops.popleft() if self._drops else None
        hold = self._holds.popleft() if self._holds else None
        with_usage = include_usage and not self.omit_usage

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        events = [event({"role": "assistant", "content": ""})]
        events += [event({"content": word}) for word in _words(self.reply)]
        events.append(event({}, "stop"))
        if with_usage:
            usage = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": self._usage(prompt_tokens),
            }
            events.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        for sent, payload in enumerate(events):
            if drop_after is not None and sent >= drop_after:
                raise _StreamDropped
            if hold is not None and sent == hold[0]:
                self._held.add(hold[1])
                try:
                    await hold[1].wait()
                finally:
                    self._held.discard(hold[1])
            yield payload

    # -- in-process: httpx ------------------------------------------------------------------------

    def httpx_transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` answering through this fake (no socket)."""
        import httpx

        async def handler(request: httpx.Request) -> httpx.Response:
            try:
                reply = await self.handle(
                    request.method, request.url.path, dict(request.headers), request.content
                )
            except _Refused:
                raise httpx.ConnectError("connection refused (scripted)", request=request) from None
            if reply.chunks is None:
                return httpx.Response(reply.status, headers=reply.headers, content=reply.body)
            return httpx.Response(
                reply.status, headers=reply.headers, content=_httpx_chunks(reply.chunks, request)
            )

        return httpx.MockTransport(handler)

    # -- loopback server: aiohttp.web -------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on a loopback port; yields the base URL ``http://127.0.0.1:<port>/v1``."""
        from aiohttp import web

        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError("FakeUpstream serves on loopback only")
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._web_handler)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0]
            yield f"http://{host}:{bound[1]}/v1"
        finally:
            for _after, event in self._holds:
                event.set()
            for event in self._held:
                event.set()
            await runner.cleanup()

    async def _web_handler(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        body = await request.read()
        try:
            reply = await self.handle(request.method, request.path, request.headers, body)
        except _Refused:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if reply.chunks is None:
            return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        try:
            async for chunk in reply.chunks:
                await response.write(chunk)
        except _StreamDropped:
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response


async def _httpx_chunks(chunks: AsyncIterator[bytes], request: httpx.Request) -> AsyncIterator[bytes]:
    import httpx

    try:
        async for chunk in chunks:
            yield chunk
    except _StreamDropped:
        raise httpx.ReadError("connection dropped mid-stream (scripted)", request=request) from None
