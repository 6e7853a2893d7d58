"""The upstream data plane: HTTP transports, the upstream config, retries and the circuit breaker.

Every request a gateway forwards to an OpenAI-compatible upstream goes through a small
:class:`UpstreamTransport`. Two implementations ship:

* :class:`AiohttpTransport` - the default data plane: one pooled ``aiohttp.ClientSession``
  (created lazily inside the running event loop), keep-alive connections, connect / read /
  total timeouts, streamed bodies yielded chunk by chunk as they arrive.
* :class:`HttpxTransport` - takes any ``httpx.AsyncClient``, so ``httpx.MockTransport`` fakes
  (and users' own clients) work. The httpx API costs measurably more per request, which is why
  it is not the default for forwarding.

Both enforce the same :class:`Timeouts` (``total`` is a deadline for the whole exchange, a
streamed body included) and read at most ``max_response_bytes`` of a buffered body
(decompressed; :data:`DEFAULT_MAX_RESPONSE_BYTES` by default).

A transport does plain HTTP and nothing else: it never retries, never follows redirects, and
turns its library's exceptions into :class:`TransportError` subclasses, so the layer above
(:class:`maaskit.services.ai_api.DefaultAiApiService`) depends on neither aiohttp nor httpx.

:class:`RetryPolicy` retries with tenacity on connect errors and on 408/409/429/5xx answers,
honouring ``Retry-After`` (seconds or an HTTP date) and failing fast when the upstream asks for a
longer wait than ``retry_after_cap``. :class:`CircuitBreaker` is a small async-friendly
closed / open / half-open state machine, one per upstream, driven by an injected
:class:`~maaskit.clock.Clock`.

Example::

    from maaskit.services.upstream import AiohttpTransport, Upstream

    upstream = Upstream(name="openai", base_url="https://api.openai.com/v1", api_key="sk-...")
    transport = AiohttpTransport()
    response = await transport.request("GET", upstream.url("models"), headers=upstream.auth_headers())
    await transport.aclose()
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from email.utils import parsedate_to_datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

import attrs
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from maaskit.clock import Clock
from maaskit.errors import UnavailableError, UpstreamError, ValidationError

if TYPE_CHECKING:
    import aiohttp
    import httpx
    from pydantic import SecretStr

    from maaskit.settings import Settings

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RETRY_STATUSES",
    "AiohttpTransport",
    "CircuitBreaker",
    "CircuitState",
    "HttpxTransport",
    "RetryPolicy",
    "Timeouts",
    "TransportClosedError",
    "TransportConnectError",
    "TransportError",
    "TransportTimeoutError",
    "Upstream",
    "UpstreamResponse",
    "UpstreamTransport",
    "defer_retry",
    "parse_retry_after",
]

_log = structlog.get_logger(__name__)

#: Statuses retried by default: request timeout, conflict, too many requests and every 5xx.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, *range(500, 600)})

#: The largest response body a transport reads by default (bytes, after decompression).
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# transport errors


class TransportError(Exception):
    """A transport-level failure (no HTTP answer, or the body broke off).

    Transports raise these instead of their library's exceptions. Messages never contain
    request headers (so never the upstream key).
    """

    kind = "transport"


class TransportConnectError(TransportError):
    """The connection could not be made (refused, DNS, TLS, connect timeout): nothing was sent,
    so the request is safe to retry."""

    kind = "connect"


class TransportTimeoutError(TransportError):
    """The upstream did not answer (or stopped sending) within the read/total timeout."""

    kind = "timeout"


class TransportClosedError(TransportError):
    """The connection broke after the request was sent (dropped, truncated body, protocol error)."""

    kind = "closed"


# --------------------------------------------------------------------------------------------
# timeouts, responses, the transport protocol


@attrs.frozen(cache_hash=True)  # a transport looks its client timeout up by it on every request
class Timeouts:
    """Timeouts of one upstream request, in seconds (``None``: no limit).

    Each limit is ``None`` or a finite number of seconds above zero (``inf`` and ``nan`` are
    refused: write ``None`` for no limit).

    Attributes:
        connect: to establish a connection. Waiting for a free pooled connection counts against
            it on httpx; on aiohttp that wait is bounded by *total* (a per-request timer for it
            costs about 8 us of event-loop time a request, measured in the reference gateway).
        read: between two reads of the response (the gap between streamed chunks).
        total: the whole exchange, from sending the request to the end of the body, a streamed
            body included: reading a stream past the deadline raises
            :class:`TransportTimeoutError`, whatever the gaps between its chunks.
    """

    connect: float | None = 5.0
    read: float | None = None
    total: float | None = 600.0

    def __attrs_post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValidationError(
                    "upstream.invalid_config",
                    reason=f"timeout {name} must be a finite number of seconds > 0 (or None)",
                    field=name,
                )


_DEFAULT_TIMEOUTS = Timeouts()


def _check_max_response_bytes(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValidationError(
            "upstream.invalid_config", reason="max_response_bytes must be a positive integer or None"
        )
    return value


def _origin(url: str) -> str:
    """``host[:port]`` of *url* (for errors: never a path, query or credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    return f"{host}:{port}" if port is not None else host


def _too_large(url: str, limit: int) -> UpstreamError:
    return UpstreamError(
        "upstream.invalid_response",
        upstream=_origin(url),
        reason=f"the response body is larger than max_response_bytes ({limit} bytes)",
        limit=limit,
    )


async def _no_close() -> None:
    return None


class UpstreamResponse:
    """An upstream's answer: status, headers and either the whole body or a chunk iterator.

    Non-streamed requests (and every streamed request whose status is not 2xx) come back with
    ``body`` holding the full bytes and the connection already released. A streamed 2xx response
    has ``streaming`` true: iterate :meth:`iter_chunks` and call :meth:`aclose` when done (also on
    early exit; it is idempotent).
    """

    __slots__ = ("_chunks", "_close", "body", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        chunks: AsyncIterator[bytes] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._chunks = chunks
        self._close = close

    @property
    def streaming(self) -> bool:
        """Whether the body is still to be read through :meth:`iter_chunks`."""
        return self._chunks is not None

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive (a single chunk for a buffered response).

        Raises :class:`TransportError` subclasses if the connection breaks off.
        """
        if self._chunks is not None:
            return self._chunks
        return _single(self.body)

    async def aclose(self) -> None:
        """Release the connection (closing it if the body was not read to the end)."""
        close, self._close = self._close, None
        if close is not None:
            await close()

    def __repr__(self) -> str:
        kind = "streaming" if self.streaming else f"{len(self.body)} bytes"
        return f"UpstreamResponse(status={self.status}, {kind})"


async def _single(body: bytes) -> AsyncIterator[bytes]:
    if body:
        yield body


@runtime_checkable
class UpstreamTransport(Protocol):
    """Plain HTTP to an upstream: no retries, no redirects, library errors as :class:`TransportError`.

    Implementations must not mutate *headers* (callers reuse one dict for every request).
    """

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: bytes | None = None,
        timeout: Timeouts | None = None,  # noqa: ASYNC109 - the transport's own timeouts
        stream: bool = False,
    ) -> UpstreamResponse:
        """Send one request and return the answer.

        Args:
            method: ``"GET"``, ``"POST"``...
            url: the absolute URL (the caller builds it from the configured base URL only).
            headers: request headers, sent as given.
            json_body: the already-serialised JSON body, sent untouched.
            timeout: per-request timeouts; ``None`` uses the transport's defaults.
            stream: return a streaming response for a 2xx answer instead of reading it whole.

        Raises:
            TransportConnectError: nothing was sent.
            TransportTimeoutError: the answer did not come in time.
            TransportClosedError: the connection broke off, or the body could not be decoded.
            UpstreamError: ``upstream.invalid_response`` when a body read whole is larger than
                the transport's ``max_response_bytes`` (reading stops at the limit).
        """
        ...

    async def aclose(self) -> None:
        """Close the pooled connections."""
        ...


# --------------------------------------------------------------------------------------------
# aiohttp


class AiohttpTransport:
    """The default data-plane transport: one pooled ``aiohttp.ClientSession``.

    The session is created lazily inside the running event loop on the first request (a
    transport must be used from a single loop). Redirects are never followed.

    ``Timeouts`` map to ``aiohttp.ClientTimeout``: ``connect`` to ``sock_connect``, ``read`` to
    ``sock_read``, ``total`` to ``total`` (which covers a streamed body and the wait for a free
    pooled connection too; aiohttp's own ``connect`` would add a timer to every request).

    Args:
        timeouts: default timeouts for requests that pass none.
        limit: maximum number of simultaneous connections (all hosts).
        limit_per_host: maximum per host (``0``: no per-host limit).
        keepalive_timeout: seconds an idle pooled connection is kept.
        ttl_dns_cache: seconds DNS answers are cached.
        ssl: an ``ssl.SSLContext``, ``False`` to skip verification, or ``True`` (default checks).
        max_response_bytes: the largest body read whole (every non-streamed answer, and the
            non-2xx answer of a stream request), counted after decompression; a larger one
            raises ``UpstreamError("upstream.invalid_response")`` once the limit is passed,
            without reading further. ``None``: no limit. A streamed 2xx body is not limited
            here (the service bounds each event).
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        limit: int = 256,
        limit_per_host: int = 0,
        keepalive_timeout: float = 30.0,
        ttl_dns_cache: int = 300,
        ssl: Any = True,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._timeouts = timeouts
        self._max_body = _check_max_response_bytes(max_response_bytes)
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive_timeout = keepalive_timeout
        self._ttl_dns_cache = ttl_dns_cache
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}
        # the last Timeouts object asked for and its ClientTimeout (looked up without hashing)
        self._last_timeouts: Timeouts | None = None
        self._last_client_timeout: Any = None
        self._urls: dict[str, Any] = {}

    @property
    def max_response_bytes(self) -> int | None:
        """The largest body read whole (``None``: no limit)."""
        return self._max_body

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=self._limit_per_host,
                keepalive_timeout=self._keepalive_timeout,
                ttl_dns_cache=self._ttl_dns_cache,
                ssl=self._ssl,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout(self._timeouts),
                raise_for_status=False,
                auto_decompress=True,
            )
            self._session = session
        return session

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        found = self._client_timeouts.get(timeouts)
        if found is None:
            import aiohttp

            # connect: the whole acquisition (a new connection, or the wait for a pooled one);
            # sock_connect: the socket connect of a new one
            found = aiohttp.ClientTimeout(
                total=timeouts.total,
                sock_connect=timeouts.connect,
                sock_read=timeouts.read,
            )
            self._client_timeouts[timeouts] = found
        return found

    def _url(self, url: str) -> Any:
        found = self._urls.get(url)
        if found is None:
            from yarl import URL

            if len(self._urls) >= 1024:
                self._urls.clear()
            found = self._urls[url] = URL(url)
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: bytes | None = None,
        timeout: Timeouts | None = None,  # noqa: ASYNC109 - the transport's own timeouts
        stream: bool = False,
    ) -> UpstreamResponse:
        """Send one request through the pooled session (see :class:`UpstreamTransport`)."""
        session = self._session
        if session is None or session.closed:
            session = self._get_session()
        if timeout is None:
            import aiohttp

            client_timeout: Any = aiohttp.helpers.sentinel
        elif timeout is self._last_timeouts:  # the usual case: a service's one Timeouts object
            client_timeout = self._last_client_timeout
        else:
            client_timeout = self._last_client_timeout = self._client_timeout(timeout)
            self._last_timeouts = timeout
        target = self._urls.get(url)
        try:
            resp = await session.request(
                method,
                target if target is not None else self._url(url),
                data=json_body,
                headers=headers,
                timeout=client_timeout,
                allow_redirects=False,
            )
            if not stream or not 200 <= resp.status < 300:
                try:
                    body = await _aiohttp_body(resp, self._max_body, url)
                finally:
                    resp.release()
                return UpstreamResponse(resp.status, resp.headers, body)
        except BaseException as exc:
            raise _map_aiohttp_error(exc) from None
        return UpstreamResponse(resp.status, resp.headers, chunks=_aiohttp_chunks(resp), close=_closer(resp))

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def __repr__(self) -> str:
        return f"AiohttpTransport(limit={self._limit})"


async def _aiohttp_body(resp: aiohttp.ClientResponse, limit: int | None, url: str) -> bytes:
    """The whole (decompressed) body, refused once it passes *limit* bytes."""
    if limit is None:
        return await resp.read()
    length = resp.content_length
    if length is not None and "Content-Encoding" not in resp.headers:
        # an identity body of a known length: aiohttp reads exactly that many bytes
        if length > limit:
            resp.close()
            raise _too_large(url, limit)
        return await resp.read()
    content = resp.content
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await content.readany()  # aiohttp inflates in bounded steps as it is read
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            resp.close()
            raise _too_large(url, limit)
        chunks.append(chunk)


def _closer(resp: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()

    return close


async def _aiohttp_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    content = resp.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise _map_aiohttp_error(exc) from None


def _map_aiohttp_error(exc: BaseException) -> BaseException:
    import aiohttp

    if not isinstance(exc, Exception) or isinstance(exc, TransportError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return TransportConnectError(name)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return TransportTimeoutError(name)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportClosedError(name)
    return exc


# --------------------------------------------------------------------------------------------
# httpx


class HttpxTransport:
    """A transport over any ``httpx.AsyncClient`` (e.g. one built on ``httpx.MockTransport``).

    ``Timeouts`` map to ``httpx.Timeout`` (``connect`` to ``connect`` and ``pool``, ``read`` to
    ``read`` and ``write``). httpx has no total timeout of its own, so ``total`` is enforced here
    with an asyncio deadline over the whole exchange: sending, the answer, reading a body whole,
    and every read of a streamed body (as aiohttp's ``ClientTimeout(total=...)`` does, a stream
    read past the deadline raises :class:`TransportTimeoutError`).

    Args:
        client: the client to send through; ``None`` creates a default one.
        timeouts: default timeouts for requests that pass none.
        owns_client: close *client* in :meth:`aclose` (default: only a client created here).
        max_response_bytes: the largest body read whole, after decompression (see
            :class:`AiohttpTransport`); ``None``: no limit. httpx inflates one network read at
            a time, so the body held never passes the limit by more than that one read.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        timeouts: Timeouts = _DEFAULT_TIMEOUTS,
        owns_client: bool | None = None,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        import httpx

        self._max_body = _check_max_response_bytes(max_response_bytes)
        self._owns = owns_client if owns_client is not None else client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._timeouts = timeouts
        self._httpx_timeouts: dict[Timeouts, httpx.Timeout] = {}

    @property
    def max_response_bytes(self) -> int | None:
        """The largest body read whole (``None``: no limit)."""
        return self._max_body

    def _timeout(self, timeouts: Timeouts) -> httpx.Timeout:
        found = self._httpx_timeouts.get(timeouts)
        if found is None:
            import httpx

            # pool: waiting for a pooled connection counts as connecting (nothing was sent)
            found = httpx.Timeout(
                connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
            )
            self._httpx_timeouts[timeouts] = found
        return found

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: bytes | None = None,
        timeout: Timeouts | None = None,  # noqa: ASYNC109 - the transport's own timeouts
        stream: bool = False,
    ) -> UpstreamResponse:
        """Send one request through the httpx client (see :class:`UpstreamTransport`)."""
        client = self._client
        timeouts = timeout or self._timeouts
        deadline: float | None = None
        try:
            req = client.build_request(
                method, url, headers=headers, content=json_body, timeout=self._timeout(timeouts)
            )
            if timeouts.total is None:
                resp = await client.send(req, stream=True, follow_redirects=False)
                if not stream or not 200 <= resp.status_code < 300:
                    return await self._read_whole(resp, url)
            else:
                deadline = asyncio.get_running_loop().time() + timeouts.total
                async with asyncio.timeout_at(deadline):
                    resp = await client.send(req, stream=True, follow_redirects=False)
                    if not stream or not 200 <= resp.status_code < 300:
                        return await self._read_whole(resp, url)
        except BaseException as exc:
            raise _map_httpx_error(exc) from None
        return UpstreamResponse(
            resp.status_code, resp.headers, chunks=_httpx_chunks(resp, deadline), close=resp.aclose
        )

    async def _read_whole(self, resp: httpx.Response, url: str) -> UpstreamResponse:
        try:
            body = await _httpx_body(resp, self._max_body, url)
        finally:
            await resp.aclose()  # closes the connection when the body was not read to the end
        return UpstreamResponse(resp.status_code, resp.headers, body)

    async def aclose(self) -> None:
        """Close the client if this transport owns it."""
        if self._owns:
            await self._client.aclose()

    def __repr__(self) -> str:
        return "HttpxTransport()"


async def _httpx_body(resp: httpx.Response, limit: int | None, url: str) -> bytes:
    """The whole (decoded) body, refused once it passes *limit* bytes."""
    if limit is None:
        return await resp.aread()
    headers = resp.headers
    length = headers.get("content-length")
    if length is not None and length.isascii() and length.isdigit() and "content-encoding" not in headers:
        # an identity body of a known length: httpx reads exactly that many bytes
        if int(length) > limit:
            raise _too_large(url, limit)
        return await resp.aread()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(url, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _httpx_chunks(resp: httpx.Response, deadline: float | None) -> AsyncIterator[bytes]:
    chunks = resp.aiter_bytes()
    try:
        if deadline is None:
            async for chunk in chunks:
                if chunk:
                    yield chunk
            return
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= deadline:
                raise TransportTimeoutError("total timeout")
            async with asyncio.timeout_at(deadline):  # never around the yield
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            if chunk:
                yield chunk
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise _map_httpx_error(exc) from None


def _map_httpx_error(exc: BaseException) -> BaseException:
    import httpx

    if not isinstance(exc, Exception) or isinstance(exc, TransportError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransportConnectError(name)
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeoutError(name)
    if isinstance(exc, TimeoutError):  # the total deadline (asyncio.timeout_at)
        return TransportTimeoutError("total timeout")
    if isinstance(exc, httpx.RequestError | httpx.StreamError):
        # transport errors, and DecodingError (a body its content-encoding cannot decode),
        # TooManyRedirects...: the answer is unusable, like aiohttp's ClientPayloadError
        return TransportClosedError(name)
    if isinstance(exc, UnicodeEncodeError):
        # a header that is not ASCII: the exception's args hold the whole value (maybe a key)
        return ValidationError("upstream.invalid_config", reason="a request header is not ASCII")
    return exc


# --------------------------------------------------------------------------------------------
# the upstream's configuration


def _check_base_url(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("upstream.invalid_base_url", reason="it must be a non-empty string")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValidationError("upstream.invalid_base_url", reason="it is not a valid URL") from None
    del port
    if parts.scheme not in ("http", "https"):
        raise ValidationError("upstream.invalid_base_url", reason="the scheme must be http or https")
    if not parts.hostname:
        raise ValidationError("upstream.invalid_base_url", reason="it has no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("upstream.invalid_base_url", reason="credentials in the URL are not allowed")
    if parts.query or parts.fragment:
        raise ValidationError("upstream.invalid_base_url", reason="a query or fragment is not allowed")
    if any(ch in value for ch in "\r\n\t "):
        raise ValidationError("upstream.invalid_base_url", reason="whitespace is not allowed")
    return value.rstrip("/")


def _is_token(value: str) -> bool:
    """Visible ASCII only (``!``..``~``): no space, tab, control or non-ASCII character."""
    return value.isascii() and value.isprintable() and " " not in value


def _api_key(value: str | SecretStr | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = value.get_secret_value()
    # a key goes into a header as is: httpx refuses anything but ASCII with an exception whose
    # args carry the whole header value, so such a key is refused here (the error never holds it)
    if not isinstance(value, str) or not value or not _is_token(value):
        raise ValidationError(
            "upstream.invalid_config",
            reason="the API key must be non-empty visible ASCII (no spaces or control characters)",
        )
    return value


_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_HEADER_NAME_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _headers(value: Mapping[str, str] | None) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for name, header_value in (value or {}).items():
        if not isinstance(name, str) or not isinstance(header_value, str):
            raise ValidationError("upstream.invalid_config", reason="header names and values must be strings")
        if any(ch in name + header_value for ch in "\r\n") or not name.strip():
            raise ValidationError("upstream.invalid_config", reason="a header contains a line break")
        if not set(name) <= _HEADER_NAME_CHARS:
            raise ValidationError("upstream.invalid_config", reason="a header name is not an HTTP token")
        if not (header_value.isascii() and header_value.isprintable()):
            # the value is not named: it may be a credential
            raise ValidationError(
                "upstream.invalid_config", reason=f"the value of header {name!r} is not printable ASCII"
            )
        if name.lower() in _FORBIDDEN_HEADERS:
            raise ValidationError("upstream.invalid_config", reason=f"header {name!r} cannot be set")
        out[name] = header_value
    return MappingProxyType(out)


def _model_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    out = dict(value or {})
    for client, upstream in out.items():
        if not isinstance(client, str) or not isinstance(upstream, str) or not client or not upstream:
            raise ValidationError(
                "upstream.invalid_config", reason="model map entries must be non-empty strings"
            )
    return MappingProxyType(out)


@attrs.frozen(eq=False)
class Upstream:
    """One OpenAI-compatible upstream: where requests go and how they are authenticated.

    The host is fixed here; nothing in a client's request (``api_base``, ``base_url``, headers)
    can redirect a request elsewhere.

    Attributes:
        name: a short label used in errors, logs and the circuit breaker.
        base_url: ``http(s)://host[:port][/prefix]``, e.g. ``https://api.openai.com/v1``
            (no credentials, query or fragment; a trailing slash is dropped).
        api_key: the upstream bearer key (a ``str`` or pydantic ``SecretStr``); never in a repr.
        headers: extra headers sent with every request (never in a repr either).
        timeouts: request timeouts.
        model_map: client model name -> upstream model name; unmapped names pass unchanged.
    """

    name: str = attrs.field()
    base_url: str = attrs.field(converter=_check_base_url)
    api_key: str | None = attrs.field(default=None, converter=_api_key, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_headers, repr=False)
    timeouts: Timeouts = attrs.field(default=_DEFAULT_TIMEOUTS)
    model_map: Mapping[str, str] = attrs.field(factory=dict, converter=_model_map)

    @name.validator
    def _check_name(self, _attribute: Any, value: str) -> None:
        if not isinstance(value, str) or not value or len(value) > 100:
            raise ValidationError("upstream.invalid_config", reason="the name must be 1-100 characters")

    @classmethod
    def from_settings(cls, settings: Settings, *, name: str = "default") -> Upstream:
        """The upstream configured by ``MAASKIT_UPSTREAM_URL`` / ``_API_KEY`` / timeouts."""
        if settings.upstream_url is None:
            raise ValidationError("upstream.not_configured")
        return cls(
            name=name,
            base_url=settings.upstream_url,
            api_key=settings.upstream_api_key,
            timeouts=Timeouts(
                connect=settings.upstream_connect_timeout, read=None, total=settings.upstream_timeout
            ),
        )

    def url(self, path: str) -> str:
        """``base_url`` joined with a fixed API *path* such as ``"chat/completions"``."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def upstream_model(self, model: str) -> str:
        """The upstream's name for the client-facing *model*."""
        return self.model_map.get(model, model)

    def auth_headers(self, *, json: bool = False) -> dict[str, str]:
        """The headers of every request: extra headers, then the bearer key, then content type."""
        out = dict(self.headers)
        if self.api_key is not None:
            out["Authorization"] = f"Bearer {self.api_key}"
        if json:
            out["Content-Type"] = "application/json"
        return out


# --------------------------------------------------------------------------------------------
# retries


def parse_retry_after(value: str | None, clock: Clock) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or ``None``.

    A date in the past gives ``0.0``; an unparseable, out-of-range or negative value gives
    ``None`` (the caller falls back to its own backoff).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                return None
            return max(0.0, (when - clock.now()).total_seconds())
        except (TypeError, ValueError, IndexError, OverflowError):
            # OverflowError: a year beyond what datetime (or a C int) holds
            return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


class _RetryScope:
    """What the attempts of one :meth:`RetryPolicy.call` told it (see :func:`defer_retry`)."""

    __slots__ = ("wait",)

    def __init__(self) -> None:
        self.wait: float | None = None


_SCOPE: ContextVar[_RetryScope | None] = ContextVar("maaskit_retry_scope", default=None)


def defer_retry(seconds: float | None) -> None:
    """Tell the :class:`RetryPolicy` running the current attempt that another attempt cannot
    succeed for *seconds* (``math.inf``: not at all; ``None``: no such knowledge).

    Called from inside an attempt, e.g. by a credential pool whose every credential for the
    request is cooling down. The policy then waits at least that long before the next attempt,
    or, when that is beyond its ``retry_after_cap``, returns the answer at once (with a
    ``Retry-After`` of that many seconds when the upstream sent none) instead of sleeping into a
    certain failure. The hint covers the attempt that gave it only. Outside a policy's call
    (no retries running) it does nothing.
    """
    scope = _SCOPE.get()
    if scope is not None:
        scope.wait = seconds


def _with_retry_after(resp: UpstreamResponse, scope: _RetryScope | None, clock: Clock) -> UpstreamResponse:
    """*resp* with ``Retry-After: <the deferral>`` when an attempt deferred the retry and the
    upstream's answer says nothing usable about when to come back."""
    if scope is None or scope.wait is None or resp.streaming or not math.isfinite(scope.wait):
        return resp
    headers = resp.headers
    if parse_retry_after(headers.get("Retry-After"), clock) is not None:
        return resp  # the upstream's own word stands
    value = str(max(1, math.ceil(scope.wait)))
    copy: Any
    try:
        copy = headers.copy()  # type: ignore[attr-defined]  # httpx.Headers, CIMultiDict, dict
        copy["Retry-After"] = value
    except (AttributeError, TypeError):
        copy = {**headers, "Retry-After": value}
    return UpstreamResponse(resp.status, copy, resp.body)


def _retry_after_of(state: RetryCallState, clock: Clock) -> float | None:
    outcome = state.outcome
    if outcome is None or outcome.failed:
        return None
    result = outcome.result()
    if isinstance(result, UpstreamResponse):
        return parse_retry_after(result.headers.get("Retry-After"), clock)
    return None


class _WaitRetryAfter(wait_base):
    """Wait what the upstream's ``Retry-After`` says, else the fallback backoff; never less than
    an attempt's :func:`defer_retry`."""

    def __init__(self, clock: Clock, fallback: wait_base, scope: _RetryScope) -> None:
        self._clock = clock
        self._fallback = fallback
        self._scope = scope

    def __call__(self, retry_state: RetryCallState) -> float:
        seconds = _retry_after_of(retry_state, self._clock)
        if seconds is None:
            seconds = float(self._fallback(retry_state))
        deferred = self._scope.wait
        if deferred is not None and deferred > seconds:
            return deferred
        return seconds


class _StopOnLongRetryAfter(stop_base):
    """Stop at once when the upstream (or an attempt's :func:`defer_retry`) asks for a wait
    beyond the cap (fail fast)."""

    def __init__(self, clock: Clock, cap: float, scope: _RetryScope) -> None:
        self._clock = clock
        self._cap = cap
        self._scope = scope

    def __call__(self, retry_state: RetryCallState) -> bool:
        deferred = self._scope.wait
        if deferred is not None and deferred > self._cap:
            return True
        seconds = _retry_after_of(retry_state, self._clock)
        return seconds is not None and seconds > self._cap


class _Replay:
    """Attempt function for tenacity whose first call replays an outcome already in hand."""

    __slots__ = ("_first", "_fn", "_scope")

    def __init__(
        self,
        first: UpstreamResponse | BaseException,
        fn: Callable[[], Awaitable[UpstreamResponse]],
        scope: _RetryScope,
    ):
        self._first: UpstreamResponse | BaseException | None = first
        self._fn = fn
        self._scope = scope

    async def __call__(self) -> UpstreamResponse:
        first, self._first = self._first, None
        if first is None:
            self._scope.wait = None  # a deferral covers the attempt that made it only
            return await self._fn()
        if isinstance(first, BaseException):
            raise first
        return first


@attrs.frozen
class RetryPolicy:
    """When and how long to retry an upstream request (executed by tenacity).

    Retries happen on :class:`TransportConnectError` and on *retry_statuses*; the wait is the
    upstream's ``Retry-After`` when it sends one, else exponential backoff with jitter. An upstream
    asking for more than *retry_after_cap* seconds is not retried at all: its answer is returned at
    once (the service turns it into an error carrying ``retry_after``). An attempt that knows no
    retry can succeed for a while (a credential pool with every credential cooling down) says so
    with :func:`defer_retry`: the policy waits at least that long, or fails fast the same way
    when that is beyond the cap. The first attempt runs without tenacity (it costs ~20 us per
    call); tenacity takes over only once a retry is due.

    Attributes:
        max_attempts: attempts in total (``1`` disables retries).
        retry_statuses: HTTP statuses worth another attempt.
        retry_after_cap: the longest ``Retry-After`` (seconds) worth waiting for.
        backoff_initial: first backoff without ``Retry-After``, seconds.
        backoff_max: backoff ceiling, seconds.
        jitter: random extra backoff, up to this many seconds.
        sleep: the coroutine function that waits (inject a fake in tests).
    """

    max_attempts: int = attrs.field(default=3)
    retry_statuses: frozenset[int] = attrs.field(default=DEFAULT_RETRY_STATUSES, converter=frozenset)
    retry_after_cap: float = 10.0
    backoff_initial: float = 0.25
    backoff_max: float = 4.0
    jitter: float = 0.25
    sleep: Callable[[float], Awaitable[None]] = attrs.field(default=asyncio.sleep, eq=False, repr=False)

    @max_attempts.validator
    def _check_attempts(self, _attribute: Any, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 20:
            raise ValidationError("upstream.invalid_config", reason="max_attempts must be 1-20")

    def __attrs_post_init__(self) -> None:
        for name in ("retry_after_cap", "backoff_initial", "backoff_max", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValidationError("upstream.invalid_config", reason=f"{name} must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetryPolicy:
        """A policy from ``MAASKIT_UPSTREAM_MAX_RETRIES`` / ``_RETRY_AFTER_CAP``."""
        values: dict[str, Any] = {
            "max_attempts": settings.upstream_max_retries + 1,
            "retry_after_cap": settings.upstream_retry_after_cap,
        }
        values.update(overrides)
        return cls(**values)

    def should_retry(self, outcome: UpstreamResponse | BaseException) -> bool:
        """Whether *outcome* (a response or an exception) is worth another attempt."""
        if isinstance(outcome, BaseException):
            return isinstance(outcome, TransportConnectError)
        return outcome.status in self.retry_statuses

    async def call(
        self, attempt: Callable[[], Awaitable[UpstreamResponse]], clock: Clock, *, name: str = "upstream"
    ) -> UpstreamResponse:
        """Run *attempt* until it succeeds, is not retryable, or the policy gives up.

        Returns the last response (possibly a non-2xx one); raises the last exception. An
        attempt may call :func:`defer_retry` to say when another one could succeed.
        """
        scope = _RetryScope()
        token = _SCOPE.set(scope)
        try:
            try:
                first: UpstreamResponse | BaseException = await attempt()
            except TransportConnectError as exc:
                first = exc
            return await self._resume(first, attempt, clock, name, scope)
        finally:
            _SCOPE.reset(token)

    async def resume(
        self,
        first: UpstreamResponse | BaseException,
        attempt: Callable[[], Awaitable[UpstreamResponse]],
        clock: Clock,
        *,
        name: str = "upstream",
    ) -> UpstreamResponse:
        """Go on with a call whose first attempt (made by the caller) gave *first*.

        ``call(attempt)`` is ``resume(<outcome of attempt()>, attempt)``: a hot path can make the
        first attempt itself and come here only when :meth:`should_retry` says a retry is due.
        Returns the last response; raises the last exception (*first* itself when it is one and
        no retry is due).
        """
        if self.max_attempts == 1 or not self.should_retry(first):
            if isinstance(first, BaseException):
                raise first
            return first
        scope = _RetryScope()  # the later attempts may defer_retry()
        token = _SCOPE.set(scope)
        try:
            return await self._resume(first, attempt, clock, name, scope)
        finally:
            _SCOPE.reset(token)

    async def _resume(
        self,
        first: UpstreamResponse | BaseException,
        attempt: Callable[[], Awaitable[UpstreamResponse]],
        clock: Clock,
        name: str,
        scope: _RetryScope,
    ) -> UpstreamResponse:
        if self.max_attempts == 1 or not self.should_retry(first):
            if isinstance(first, BaseException):
                raise first
            return _with_retry_after(first, scope, clock)
        return await self._retrying(clock, name, scope)(_Replay(first, attempt, scope))

    def _retrying(self, clock: Clock, name: str, scope: _RetryScope) -> AsyncRetrying:
        statuses = self.retry_statuses

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            status = None
            if outcome is not None and not outcome.failed:
                status = outcome.result().status
            _log.info(
                "upstream.retry",
                upstream=name,
                attempt=state.attempt_number,
                status=status,
                error=type(outcome.exception()).__name__ if outcome is not None and outcome.failed else None,
                wait=round(state.upcoming_sleep, 3),
            )

        def give_up(state: RetryCallState) -> Any:
            assert state.outcome is not None
            # the last response, or re-raise the last error
            return _with_retry_after(state.outcome.result(), scope, clock)

        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts)
            | _StopOnLongRetryAfter(clock, self.retry_after_cap, scope),
            wait=_WaitRetryAfter(
                clock,
                wait_exponential_jitter(
                    multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.jitter
                ),
                scope,
            ),
            retry=retry_if_exception_type(TransportConnectError)
            | retry_if_result(lambda r: isinstance(r, UpstreamResponse) and r.status in statuses),
            sleep=self.sleep,
            before_sleep=before_sleep,
            retry_error_callback=give_up,
        )


# --------------------------------------------------------------------------------------------
# circuit breaker


class CircuitState(StrEnum):
    """The states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed / open / half-open breaker for one upstream, on an injected clock.

    * **closed**: calls pass; a failure is remembered for *window* seconds. When
      *failure_threshold* failures fall within the window, the breaker opens.
    * **open**: calls are refused with ``UnavailableError("upstream.circuit_open")`` carrying
      ``retry_after`` until *open_duration* has passed; then it is half-open.
    * **half-open**: exactly one call (the probe) passes; others are refused. The probe's success
      closes the breaker (failures forgotten), its failure opens it for another *open_duration*,
      and a probe that ends without a verdict (cancelled, client error) frees the slot.

    The state changes synchronously (no ``await`` inside), so it is safe under asyncio without
    a lock. Use it as::

        probe = breaker.before_call()      # raises when open
        try:
            ok = await do_the_call()
        except BaseException:
            breaker.release(probe); raise
        breaker.record_success(probe) if ok else breaker.record_failure(probe)

    Results of calls that started before the breaker opened are ignored while it is not closed.
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_half_open_retry_after",
        "_opened_at",
        "_probe_in_flight",
        "_state",
        "failure_threshold",
        "name",
        "open_duration",
        "window",
    )

    def __init__(
        self,
        name: str,
        clock: Clock,
        *,
        failure_threshold: int = 5,
        window: float = 60.0,
        open_duration: float = 30.0,
        half_open_retry_after: float = 1.0,
    ) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValidationError("upstream.invalid_config", reason="failure_threshold must be >= 1")
        for label, value in (("window", window), ("open_duration", open_duration)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError("upstream.invalid_config", reason=f"{label} must be > 0")
        self.name = name
        self._clock = clock
        self.failure_threshold = failure_threshold
        self.window = float(window)
        self.open_duration = float(open_duration)
        self._half_open_retry_after = half_open_retry_after
        self._state = CircuitState.CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose time is up reads as half-open)."""
        if (
            self._state is CircuitState.OPEN
            and self._clock.monotonic() >= self._opened_at + self.open_duration
        ):
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def probe_in_flight(self) -> bool:
        """Whether the half-open probe call is running."""
        return self._probe_in_flight

    def before_call(self) -> bool:
        """Admit a call or raise; returns ``True`` when this call is the half-open probe.

        Raises:
            UnavailableError: ``upstream.circuit_open`` with ``upstream`` and ``retry_after``.
        """
        state = self._state
        if state is CircuitState.CLOSED:
            return False
        state = self.state
        if state is CircuitState.OPEN:
            remaining = self._opened_at + self.open_duration - self._clock.monotonic()
            raise UnavailableError(
                "upstream.circuit_open", upstream=self.name, retry_after=round(max(remaining, 0.001), 3)
            )
        if state is CircuitState.HALF_OPEN:
            if self._probe_in_flight:
                raise UnavailableError(
                    "upstream.circuit_open", upstream=self.name, retry_after=self._half_open_retry_after
                )
            self._probe_in_flight = True
            return True
        return False

    def record_success(self, probe: bool = False) -> None:
        """A call admitted by :meth:`before_call` succeeded."""
        if probe and self._probe_in_flight and self._state is CircuitState.HALF_OPEN:
            self._probe_in_flight = False
            self._state = CircuitState.CLOSED
            self._failures.clear()
            _log.info("upstream.circuit_closed", upstream=self.name)

    def record_failure(self, probe: bool = False) -> None:
        """A call admitted by :meth:`before_call` failed (connect error, timeout, 5xx...)."""
        now = self._clock.monotonic()
        if probe:
            if self._probe_in_flight and self._state is CircuitState.HALF_OPEN:
                self._open(now)
            return
        if self._state is not CircuitState.CLOSED:
            return
        failures = self._failures
        failures.append(now)
        horizon = now - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if len(failures) >= self.failure_threshold:
            self._open(now)

    def release(self, probe: bool = False) -> None:
        """A call ended without a verdict (cancelled, or the caller's own fault)."""
        if probe and self._probe_in_flight and self._state is CircuitState.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = now
        self._probe_in_flight = False
        self._failures.clear()
        _log.warning("upstream.circuit_open", upstream=self.name, open_for=self.open_duration)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"
