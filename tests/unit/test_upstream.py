"""Upstream config, Retry-After parsing, the retry policy and both transports against FakeUpstream."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from maaskit.errors import UpstreamError, ValidationError
from maaskit.services.upstream import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AiohttpTransport,
    CircuitBreaker,
    CircuitState,
    HttpxTransport,
    RetryPolicy,
    Timeouts,
    TransportClosedError,
    TransportConnectError,
    TransportError,
    TransportTimeoutError,
    Upstream,
    UpstreamResponse,
    UpstreamTransport,
    defer_retry,
    parse_retry_after,
)
from maaskit.settings import Settings
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_upstream import FakeUpstream

KEY = "sk-upstream-secret-123"


# -- Upstream config -------------------------------------------------------------------------


def test_upstream_keeps_key_and_headers_out_of_repr() -> None:
    up = Upstream(name="openai", base_url="https://api.example.com/v1/", api_key=KEY, headers={"X-Org": "o1"})
    assert up.base_url == "https://api.example.com/v1"
    assert KEY not in repr(up)
    assert "o1" not in repr(up)
    assert up.auth_headers()["Authorization"] == f"Bearer {KEY}"
    assert up.auth_headers(json=True)["Content-Type"] == "application/json"
    assert up.url("chat/completions") == "https://api.example.com/v1/chat/completions"


def test_upstream_accepts_secretstr() -> None:
    up = Upstream(name="u", base_url="http://127.0.0.1:1/v1", api_key=SecretStr(KEY))
    assert up.api_key == KEY
    assert KEY not in repr(up)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "file:///etc/passwd",
        "example.com/v1",
        "http://",
        "https://user:pw@example.com/v1",
        "https://example.com/v1?x=1",
        "https://example.com/v1#frag",
        "https://exa mple.com",
        "http://example.com:99999",
        "",
    ],
)
def test_upstream_refuses_bad_base_urls(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Upstream(name="u", base_url=url)
    assert info.value.code == "upstream.invalid_base_url"
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    "headers", [{"Host": "evil.example"}, {"X-A": "a\r\nInjected: 1"}, {"Content-Length": "1"}]
)
def test_upstream_refuses_bad_headers(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        Upstream(name="u", base_url="https://example.com", headers=headers)
    assert info.value.code == "upstream.invalid_config"


def test_upstream_model_map_and_from_settings() -> None:
    up = Upstream(name="u", base_url="https://example.com", model_map={"gpt": "gpt-4o-2024"})
    assert up.upstream_model("gpt") == "gpt-4o-2024"
    assert up.upstream_model("other") == "other"
    settings = Settings(
        upstream_url="https://api.example.com/v1", upstream_api_key=KEY, upstream_timeout=30.0
    )
    from_settings = Upstream.from_settings(settings)
    assert from_settings.api_key == KEY
    assert from_settings.timeouts == Timeouts(connect=5.0, read=None, total=30.0)
    policy = RetryPolicy.from_settings(settings)
    assert policy.max_attempts == settings.upstream_max_retries + 1
    with pytest.raises(ValidationError) as info:
        Upstream.from_settings(Settings())
    assert info.value.code == "upstream.not_configured"


def test_timeouts_and_policy_validation() -> None:
    with pytest.raises(ValidationError):
        Timeouts(connect=0)
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy(retry_after_cap=float("nan"))


# -- Retry-After ---------------------------------------------------------------------------


def test_parse_retry_after_seconds_and_dates(clock: FakeClock) -> None:
    assert parse_retry_after("2", clock) == 2.0
    assert parse_retry_after(" 1.5 ", clock) == 1.5
    assert parse_retry_after(format_datetime(clock.now() + timedelta(seconds=30), usegmt=True), clock) == 30.0
    assert parse_retry_after(format_datetime(clock.now() - timedelta(seconds=30), usegmt=True), clock) == 0.0
    for bad in (None, "", "soon", "-1", "nan", "inf"):
        assert parse_retry_after(bad, clock) is None


# -- the retry policy ----------------------------------------------------------------------


class Script:
    """An attempt function answering from a script of statuses / exceptions."""

    def __init__(self, *outcomes: int | tuple[int, str] | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> UpstreamResponse:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, tuple):
            return UpstreamResponse(outcome[0], {"Retry-After": outcome[1]})
        return UpstreamResponse(outcome, {})


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_retry_succeeds_after_transient_failures(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=4, sleep=sleeps, jitter=0)
    script = Script(503, TransportConnectError("x"), 200)
    resp = await policy.call(script, clock)
    assert resp.status == 200
    assert script.calls == 3
    assert sleeps.waits == [0.25, 0.5]  # exponential backoff without Retry-After


async def test_retry_honours_retry_after_seconds_and_dates(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, sleep=sleeps, retry_after_cap=60)
    date = format_datetime(clock.now() + timedelta(seconds=7), usegmt=True)
    script = Script((429, "3"), (503, date), 200)
    assert (await policy.call(script, clock)).status == 200
    assert sleeps.waits == [3.0, 7.0]


async def test_retry_fails_fast_beyond_the_cap(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=5, sleep=sleeps, retry_after_cap=10)
    script = Script((429, "30"), 200)
    resp = await policy.call(script, clock)
    assert resp.status == 429
    assert script.calls == 1
    assert sleeps.waits == []


async def test_retry_gives_up_after_max_attempts(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, sleep=sleeps)
    script = Script(500, 502, 503, 200)
    resp = await policy.call(script, clock)
    assert resp.status == 503
    assert script.calls == 3
    assert len(sleeps.waits) == 2
    connect = Script(*(TransportConnectError("x") for _ in range(3)))
    with pytest.raises(TransportConnectError):
        await policy.call(connect, clock)
    assert connect.calls == 3


@pytest.mark.parametrize("outcome", [400, 401, 404, 422, TransportTimeoutError("t")])
async def test_no_retry_on_other_outcomes(clock: FakeClock, outcome: int | BaseException) -> None:
    script = Script(outcome, 200)
    policy = RetryPolicy(max_attempts=3, sleep=Sleeps())
    if isinstance(outcome, BaseException):
        with pytest.raises(TransportTimeoutError):
            await policy.call(script, clock)
    else:
        assert (await policy.call(script, clock)).status == outcome
    assert script.calls == 1


async def test_single_attempt_policy(clock: FakeClock) -> None:
    script = Script(503, 200)
    assert (await RetryPolicy(max_attempts=1).call(script, clock)).status == 503
    assert script.calls == 1


# -- transports against the fake -----------------------------------------------------------


@pytest.fixture(params=["httpx", "aiohttp"])
async def transport_and_base(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[UpstreamTransport, str, FakeUpstream]]:
    fake = FakeUpstream(api_key=KEY)
    if request.param == "httpx":
        transport: UpstreamTransport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()))
        try:
            yield transport, fake.base_url, fake
        finally:
            await transport.aclose()
    else:
        async with fake.serve() as base:
            transport = AiohttpTransport()
            try:
                yield transport, base, fake
            finally:
                await transport.aclose()


async def test_transport_roundtrip(transport_and_base: tuple[UpstreamTransport, str, FakeUpstream]) -> None:
    transport, base, fake = transport_and_base
    up = Upstream(name="f", base_url=base, api_key=KEY)
    assert isinstance(transport, UpstreamTransport)
    resp = await transport.request("GET", up.url("models"), headers=up.auth_headers())
    assert resp.status == 200
    assert not resp.streaming
    assert b"fake-model" in resp.body
    assert resp.headers["Content-Type"].startswith("application/json")  # case-insensitive headers
    body = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"stream":true}'
    stream = await transport.request(
        "POST", up.url("chat/completions"), headers=up.auth_headers(json=True), json_body=body, stream=True
    )
    assert stream.streaming
    data = b"".join([c async for c in stream.iter_chunks()])
    await stream.aclose()
    assert data.endswith(b"data: [DONE]\n\n")
    assert fake.requests[-1].json["stream"] is True
    assert fake.requests[-1].authorized


async def test_streamed_error_status_is_read_whole(
    transport_and_base: tuple[UpstreamTransport, str, FakeUpstream],
) -> None:
    transport, base, fake = transport_and_base
    up = Upstream(name="f", base_url=base, api_key=KEY)
    fake.fail_next(503, retry_after=1)
    resp = await transport.request(
        "POST", up.url("chat/completions"), headers=up.auth_headers(json=True), json_body=b"{}", stream=True
    )
    assert resp.status == 503
    assert not resp.streaming
    assert resp.headers["retry-after"] == "1"
    assert b"Scripted failure" in resp.body


async def test_aiohttp_connect_error_is_mapped() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on *port* now
    transport = AiohttpTransport(timeouts=Timeouts(connect=2.0, total=5.0))
    try:
        with pytest.raises(TransportConnectError) as info:
            await transport.request(
                "GET", f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": KEY}
            )
        assert KEY not in str(info.value)
    finally:
        await transport.aclose()


async def test_httpx_connect_error_is_mapped() -> None:
    fake = FakeUpstream(api_key=KEY)
    fake.refuse_next()
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    with pytest.raises(TransportConnectError):
        await transport.request("GET", f"{fake.base_url}/models", headers={})
    await transport.aclose()


async def test_aiohttp_read_timeout_is_mapped() -> None:
    import asyncio

    release = asyncio.Event()

    async def stall(_seconds: float) -> None:  # the fake answers only once the test says so
        await release.wait()

    fake = FakeUpstream(api_key=KEY, latency=1.0, sleep=stall)
    async with fake.serve() as base:
        transport = AiohttpTransport()
        try:
            with pytest.raises(TransportTimeoutError):
                await transport.request(
                    "GET",
                    f"{base}/models",
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=Timeouts(connect=1.0, read=0.01, total=5.0),
                )
        finally:
            release.set()
            await transport.aclose()


# -- review fixes: Retry-After overflow, finite timeouts, deadlines, decoding, keys, size ------

HUGE_DATE = "Mon, 01 Jan 99999999999999 00:00:00 GMT"


def test_parse_retry_after_overflowing_date_is_garbage(clock: FakeClock) -> None:
    # parsedate_to_datetime raised a raw OverflowError for a year beyond a C int
    for bad in (HUGE_DATE, "Mon, 01 Jan 10000 00:00:00 GMT", "Wed, 31 Feb 2030 07:28:00 GMT"):
        assert parse_retry_after(bad, clock) is None


async def test_retry_falls_back_to_backoff_on_an_overflowing_date(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, sleep=sleeps, jitter=0)
    script = Script((429, HUGE_DATE), (503, HUGE_DATE), 200)
    assert (await policy.call(script, clock)).status == 200
    assert sleeps.waits == [0.25, 0.5]
    last = Script((429, HUGE_DATE))
    assert (await RetryPolicy(max_attempts=1).call(last, clock)).status == 429


@pytest.mark.parametrize("field", ["connect", "read", "total"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), True, 0, -1.0, "5"])
def test_timeouts_must_be_finite_and_positive(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Timeouts(**{field: value})  # type: ignore[arg-type]
    assert info.value.code == "upstream.invalid_config"
    assert info.value.params["field"] == field
    assert field in info.value.params["reason"]
    assert Timeouts(**{field: None}) is not None  # None still means "no limit"


@pytest.mark.parametrize("setting", ["upstream_timeout", "upstream_connect_timeout"])
@pytest.mark.parametrize("value", ["inf", "Infinity", "nan"])
def test_settings_refuse_infinite_upstream_timeouts(setting: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(upstream_url="http://127.0.0.1:1/v1", **{setting: value})  # type: ignore[arg-type]
    assert f"MAASKIT_{setting.upper()}" in str(info.value)


async def _serve(handler: Any) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def test_aiohttp_total_timeout_bounds_the_wait_for_a_pooled_connection() -> None:
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server, base = await _serve(handle)
    transport = AiohttpTransport(limit=1)
    timeouts = Timeouts(connect=0.2, read=None, total=0.5)
    client_timeout = transport._client_timeout(timeouts)
    # no per-request connect timer (it cost ~8 us a request): the total bounds the pool wait
    assert (client_timeout.connect, client_timeout.sock_connect, client_timeout.total) == (None, 0.2, 0.5)
    try:
        first = asyncio.ensure_future(
            transport.request("GET", f"{base}/models", headers={}, timeout=timeouts)
        )
        await asyncio.sleep(0.05)  # the first request holds the only connection
        started = time.monotonic()
        with pytest.raises(TransportError):
            await transport.request("GET", f"{base}/models", headers={}, timeout=timeouts)
        assert time.monotonic() - started < 2.0  # bounded, not waiting for the first request
        release.set()
        with pytest.raises(TransportError):  # the first one, held past its own total
            await first
    finally:
        release.set()
        await transport.aclose()
        server.close()


def _trickle_handler(
    status: bytes = b"200 OK", content_type: bytes = b"application/json"
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"data": []}' + b" " * 200
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: "
            + content_type
            + b"\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        try:
            for byte in body:  # one byte every 50 ms: never a long gap, 10 s in all
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    return handle


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_total_timeout_bounds_a_trickled_body(kind: str) -> None:
    # httpx has no total timeout: it used to become the per-read gap, so this ran for 10 s
    server, base = await _serve(_trickle_handler())
    transport: UpstreamTransport = AiohttpTransport() if kind == "aiohttp" else HttpxTransport()
    timeouts = Timeouts(connect=1.0, read=None, total=0.4)
    try:
        started = time.monotonic()
        with pytest.raises(TransportTimeoutError):
            await asyncio.wait_for(
                transport.request("GET", f"{base}/models", headers={}, timeout=timeouts), 5
            )
        assert time.monotonic() - started < 2.0
    finally:
        await transport.aclose()
        server.close()


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_total_timeout_covers_a_streamed_body(kind: str) -> None:
    server, base = await _serve(_trickle_handler(content_type=b"text/event-stream"))
    transport: UpstreamTransport = AiohttpTransport() if kind == "aiohttp" else HttpxTransport()
    timeouts = Timeouts(connect=1.0, read=None, total=0.4)
    try:
        started = time.monotonic()
        resp = await transport.request("POST", f"{base}/chat", headers={}, timeout=timeouts, stream=True)
        assert resp.streaming
        with pytest.raises(TransportTimeoutError):
            await asyncio.wait_for(_drain(resp), 5)
        assert time.monotonic() - started < 2.0
        await resp.aclose()
    finally:
        await transport.aclose()
        server.close()


async def _drain(resp: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.iter_chunks()])


def _httpx(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> HttpxTransport:
    return HttpxTransport(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True, **kwargs
    )


async def test_httpx_total_timeout_in_process() -> None:
    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(200):
                await asyncio.sleep(0.05)
                yield b" "

    transport = _httpx(lambda request: httpx.Response(200, stream=Trickle()))
    started = time.monotonic()
    with pytest.raises(TransportTimeoutError):
        await transport.request("GET", "http://up.test/v1/models", headers={}, timeout=Timeouts(total=0.3))
    assert time.monotonic() - started < 2.0
    await transport.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_httpx_decoding_error_is_mapped(stream: bool) -> None:
    # httpx.DecodingError escaped raw (not a TransportError): aiohttp's equivalent is mapped
    transport = _httpx(
        lambda request: httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip at all")
    )

    async def fetch() -> bytes:
        resp = await transport.request("GET", "http://up.test/v1/models", headers={}, stream=stream)
        return await _drain(resp)

    with pytest.raises(TransportClosedError):
        await fetch()
    await transport.aclose()


async def test_undecodable_body_is_an_invalid_response_and_a_breaker_failure(clock: FakeClock) -> None:
    from maaskit.services.ai_api import DefaultAiApiService

    transport = _httpx(
        lambda request: httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"not gzip")
    )
    breaker = CircuitBreaker("u", clock, failure_threshold=2)
    ai = DefaultAiApiService(
        Upstream(name="u", base_url="http://up.test/v1", api_key=KEY),
        transport,
        clock,
        retry=RetryPolicy(max_attempts=1),
        breaker=breaker,
    )
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "m", "messages": []})
    assert info.value.code == "upstream.invalid_response"
    check = await ai.test_api_key()  # never raises
    assert (check.ok, check.error_code) == (False, "upstream.invalid_response")
    with pytest.raises(UpstreamError):
        await ai.chat_completion({"model": "m", "messages": []})
    assert breaker.state is CircuitState.OPEN
    await transport.aclose()


@pytest.mark.parametrize(
    "key",
    [
        "sk-SECRET\u20ac123",
        "sk-SECRET\u00e9",
        "sk SECRET",
        "sk-SECRET ",
        "sk-SECRET\t",
        "sk-SECRET\x00",
        "sk-SECRET\x7f",
    ],
)
def test_upstream_refuses_keys_that_are_not_visible_ascii(key: str) -> None:
    for value in (key, SecretStr(key)):
        with pytest.raises(ValidationError) as info:
            Upstream(name="u", base_url="https://example.com", api_key=value)
        assert info.value.code == "upstream.invalid_config"
        for text in (str(info.value), repr(info.value), repr(info.value.params), repr(info.value.args)):
            assert "SECRET" not in text


def test_upstream_refuses_non_ascii_header_values_without_naming_them() -> None:
    with pytest.raises(ValidationError) as info:
        Upstream(name="u", base_url="https://example.com", headers={"X-Api-Key": "SECRET\u20ac"})
    assert info.value.code == "upstream.invalid_config"
    assert "SECRET" not in repr(info.value)
    with pytest.raises(ValidationError):
        Upstream(name="u", base_url="https://example.com", headers={"X Bad": "v"})


async def test_httpx_non_ascii_header_never_escapes_with_its_value() -> None:
    transport = _httpx(lambda request: httpx.Response(200, json={}))
    with pytest.raises(ValidationError) as info:
        await transport.request(
            "GET", "http://up.test/v1/models", headers={"Authorization": "Bearer SECRET\u20ac"}
        )
    assert "SECRET" not in repr(info.value)
    assert "SECRET" not in repr(info.value.args)
    await transport.aclose()


def test_transports_cap_bodies_at_64_mib_by_default() -> None:
    assert DEFAULT_MAX_RESPONSE_BYTES == 64 * 1024 * 1024
    assert AiohttpTransport().max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES
    assert HttpxTransport(httpx.AsyncClient()).max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES
    assert HttpxTransport(httpx.AsyncClient(), max_response_bytes=None).max_response_bytes is None
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValidationError):
            AiohttpTransport(max_response_bytes=bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            HttpxTransport(httpx.AsyncClient(), max_response_bytes=bad)  # type: ignore[arg-type]


def _gzip_bomb(size: int) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"A" * 65536
    parts = [co.compress(b'{"choices": [], "pad": "')]
    parts += [co.compress(block) for _ in range(size // len(block))]
    parts += [co.compress(b'"}'), co.flush()]
    return b"".join(parts)


def _bomb_handler(
    bomb: bytes, status: bytes
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-encoding: gzip"
            b"\r\ncontent-length: %d\r\n\r\n" % len(bomb) + bomb
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
@pytest.mark.parametrize(("status", "stream"), [(b"200 OK", False), (b"500 Internal Server Error", True)])
async def test_a_gzip_bomb_is_refused_at_the_limit(kind: str, status: bytes, stream: bool) -> None:
    bomb = _gzip_bomb(4 * 1024 * 1024)  # ~4 KB inflating to 4 MiB
    server, base = await _serve(_bomb_handler(bomb, status))
    limit = 256 * 1024
    transport: UpstreamTransport = (
        AiohttpTransport(max_response_bytes=limit)
        if kind == "aiohttp"
        else HttpxTransport(max_response_bytes=limit)
    )
    try:
        with pytest.raises(UpstreamError) as info:
            await transport.request(
                "POST", f"{base}/chat/completions", headers={}, json_body=b"{}", stream=stream
            )
        assert info.value.code == "upstream.invalid_response"
        assert str(limit) in info.value.params["reason"]
        assert "max_response_bytes" in info.value.params["reason"]
    finally:
        await transport.aclose()
        server.close()
    # the same body under a larger limit is read whole
    server, base = await _serve(_bomb_handler(bomb, b"200 OK"))
    transport = AiohttpTransport() if kind == "aiohttp" else HttpxTransport()
    try:
        resp = await transport.request("GET", f"{base}/models", headers={})
        assert len(resp.body) > 4 * 1024 * 1024
    finally:
        await transport.aclose()
        server.close()


class Counted(httpx.AsyncByteStream):
    """A body of *chunks* chunks of *size* bytes that counts how many were pulled."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size, self.pulled = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"x" * self.size


@pytest.mark.parametrize("known_length", [False, True])
async def test_httpx_stops_reading_at_the_limit(known_length: bool) -> None:
    body = Counted(64, 16 * 1024)  # 1 MiB
    headers = {"content-length": str(64 * 16 * 1024)} if known_length else {}
    transport = _httpx(
        lambda request: httpx.Response(200, headers=headers, stream=body), max_response_bytes=40_000
    )
    with pytest.raises(UpstreamError) as info:
        await transport.request("GET", "http://up.test/v1/models", headers={})
    assert "40000" in info.value.params["reason"]
    assert body.pulled == (0 if known_length else 3)  # refused by its length, or at the limit
    await transport.aclose()


async def test_an_oversized_answer_is_an_invalid_response_naming_the_limit(clock: FakeClock) -> None:
    from maaskit.services.ai_api import DefaultAiApiService

    transport = _httpx(
        lambda request: httpx.Response(200, json={"choices": [], "pad": "x" * 5000}), max_response_bytes=1024
    )
    ai = DefaultAiApiService(
        Upstream(name="u", base_url="http://up.test/v1", api_key=KEY),
        transport,
        clock,
        retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "m", "messages": []})
    assert info.value.code == "upstream.invalid_response"
    assert "1024" in info.value.message
    await transport.aclose()


# -- defer_retry: an attempt that knows no retry can succeed for a while ----------------------


class Deferring(Script):
    def __init__(self, defer: list[float | None], *outcomes: int | tuple[int, str] | BaseException) -> None:
        super().__init__(*outcomes)
        self.defer = defer

    async def __call__(self) -> UpstreamResponse:
        defer_retry(self.defer.pop(0))
        return await super().__call__()


async def test_a_deferral_beyond_the_cap_returns_the_answer_with_its_retry_after(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, sleep=sleeps, retry_after_cap=10)
    script = Deferring([30.0, None], 429, 200)
    resp = await policy.call(script, clock)
    assert (resp.status, script.calls, sleeps.waits) == (429, 1, [])  # no sleep into a failure
    assert parse_retry_after(resp.headers.get("Retry-After"), clock) == 30.0
    # an upstream's own Retry-After is kept
    own = await policy.call(Deferring([30.0], (429, "60")), clock)
    assert own.headers["Retry-After"] == "60"
    # a single-attempt policy also reports it
    single = await RetryPolicy(max_attempts=1).call(Deferring([12.5], 429), clock)
    assert single.headers["Retry-After"] == "13"


async def test_a_short_deferral_is_waited_for(clock: FakeClock) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, sleep=sleeps, jitter=0, retry_after_cap=10)
    script = Deferring([2.0, None], 429, 200)
    assert (await policy.call(script, clock)).status == 200
    assert sleeps.waits == [2.0]  # not the 0.25 s backoff


async def test_defer_retry_outside_a_policy_does_nothing(clock: FakeClock) -> None:
    defer_retry(30.0)
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=2, sleep=sleeps, jitter=0)
    assert (await policy.call(Script(429, 200), clock)).status == 200
    assert sleeps.waits == [0.25]
