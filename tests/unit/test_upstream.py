"""Upstream config, Retry-After parsing, the retry policy and both transports against FakeUpstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest
from pydantic import SecretStr

from maaskit.errors import ValidationError
from maaskit.services.upstream import (
    AiohttpTransport,
    HttpxTransport,
    RetryPolicy,
    Timeouts,
    TransportConnectError,
    TransportTimeoutError,
    Upstream,
    UpstreamResponse,
    UpstreamTransport,
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
