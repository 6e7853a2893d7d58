"""DefaultAiApiService against FakeUpstream: usage, retries, error mapping, breaker, host pinning."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from maaskit.errors import (
    MaasError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
    UpstreamError,
    ValidationError,
)
from maaskit.services.ai_api import AiApiService, DefaultAiApiService, Usage
from maaskit.services.tokens_estimate import CharTokenEstimator
from maaskit.services.upstream import (
    AiohttpTransport,
    CircuitBreaker,
    CircuitState,
    HttpxTransport,
    RetryPolicy,
    Upstream,
)
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_upstream import FakeUpstream

KEY = "sk-upstream-secret-xyz"
MESSAGES = [{"role": "user", "content": "Say hello to the world"}]


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_service(
    fake: FakeUpstream,
    clock: FakeClock,
    *,
    sleeps: Sleeps | None = None,
    attempts: int = 3,
    breaker: CircuitBreaker | None = None,
    key: str = KEY,
    model_map: dict[str, str] | None = None,
    handler_wrapper: object = None,
) -> DefaultAiApiService:
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    upstream = Upstream(name="fake", base_url=fake.base_url, api_key=key, model_map=model_map or {})
    return DefaultAiApiService(
        upstream,
        transport,
        clock,
        breaker=breaker,
        retry=RetryPolicy(max_attempts=attempts, sleep=sleeps or Sleeps(), jitter=0),
    )


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(api_key=KEY, models=("fake-model", "upstream-model"))


def assert_no_secret(error: BaseException) -> None:
    assert KEY not in str(error)
    assert KEY not in repr(error)
    if isinstance(error, MaasError):
        assert KEY not in json.dumps(error.to_dict(), default=str)
        assert KEY not in error.render("de")


# -- non-streamed ----------------------------------------------------------------------------


async def test_chat_completion_reported_usage_and_raw_body(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    assert isinstance(ai, AiApiService)
    result = await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert result.usage == Usage(
        FakeUpstream.prompt_tokens(MESSAGES),
        fake.completion_tokens,
        FakeUpstream.prompt_tokens(MESSAGES) + fake.completion_tokens,
        "reported",
    )
    assert json.loads(result.body) == result.response
    assert result.response["choices"][0]["message"]["content"] == fake.reply
    sent = fake.requests[-1]
    assert sent.authorized
    assert sent.path == "/v1/chat/completions"
    assert "stream_options" not in sent.json


async def test_chat_completion_estimates_missing_usage(fake: FakeUpstream, clock: FakeClock) -> None:
    fake.omit_usage = True
    ai = make_service(fake, clock)
    body = {"model": "fake-model", "messages": MESSAGES}
    result = await ai.chat_completion(body)
    est = CharTokenEstimator()
    prompt = est.prompt_tokens(body)
    assert prompt == -(-len(MESSAGES[0]["content"]) // 4) + 4 + 3
    completion = -(-len(fake.reply) // 4)
    assert result.usage == Usage(prompt, completion, prompt + completion, "estimated")


async def test_model_map_is_applied(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, model_map={"alias": "upstream-model"})
    result = await ai.chat_completion({"model": "alias", "messages": MESSAGES})
    assert fake.requests[-1].json["model"] == "upstream-model"
    assert result.model == "alias"


async def test_caller_cannot_pick_host_key_or_headers(fake: FakeUpstream, clock: FakeClock) -> None:
    seen: list[httpx.Request] = []
    inner = fake.httpx_transport()

    async def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return await inner.handle_async_request(request)

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(spy)), owns_client=True)
    ai = DefaultAiApiService(
        Upstream(name="fake", base_url=fake.base_url, api_key=KEY),
        transport,
        clock,
        retry=RetryPolicy(max_attempts=1),
    )
    hostile = {
        "model": "fake-model",
        "messages": MESSAGES,
        "api_base": "http://evil.example/v1",
        "base_url": "http://evil.example/v1",
        "api_key": "sk-attacker",
        "headers": {"Authorization": "Bearer sk-attacker", "Host": "evil.example"},
        "extra_headers": {"X-Forwarded-Host": "evil.example"},
    }
    await ai.chat_completion(hostile)
    async with ai.stream_chat_completion(hostile) as stream:
        _ = [c async for c in stream]
    assert len(seen) == 2
    for request in seen:
        assert request.url.host == "fake-upstream.test"
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert "x-forwarded-host" not in request.headers
        sent = json.loads(request.content)
        assert not {"api_base", "base_url", "api_key", "headers", "extra_headers"} & set(sent)
    assert "api_base" in hostile  # the caller's dict is not mutated


async def test_raw_bytes_are_forwarded_unchanged_when_no_rewrite_is_due(
    fake: FakeUpstream, clock: FakeClock
) -> None:
    ai = make_service(fake, clock)
    raw = b'{ "model" : "fake-model", "messages": [{"role":"user","content":"hi \\u00e9"}], "x": 1.50 }'
    body = json.loads(raw)
    result = await ai.chat_completion(body, raw=raw)
    assert fake.requests[-1].body == raw  # not parsed and dumped again: spacing and 1.50 kept
    assert result.usage.source == "reported"


@pytest.mark.parametrize(
    ("extra", "gone"),
    [
        ({"api_base": "http://evil.example/v1"}, "api_base"),
        ({"headers": {"Host": "evil.example"}}, "headers"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": 0}, None),
    ],
)
async def test_raw_bytes_are_not_forwarded_when_the_body_needs_rewriting(
    fake: FakeUpstream, clock: FakeClock, extra: dict[str, object], gone: str | None
) -> None:
    ai = make_service(fake, clock)
    body = {"model": "fake-model", "messages": MESSAGES, **extra}
    raw = json.dumps(body).encode()
    await ai.chat_completion(body, raw=raw)
    sent = fake.requests[-1]
    assert sent.body != raw
    if gone is not None:
        assert gone not in sent.json
    assert sent.json.get("stream", False) is False


async def test_raw_bytes_are_not_forwarded_for_a_mapped_model(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, model_map={"alias": "upstream-model"})
    body = {"model": "alias", "messages": MESSAGES}
    await ai.chat_completion(body, raw=json.dumps(body).encode())
    assert fake.requests[-1].json["model"] == "upstream-model"


@pytest.mark.parametrize(
    "reply", [b"[" * 5000 + b"]" * 5000, b'{"usage": ' * 3000 + b"1" + b"}" * 3000, b'{"a": NaN}']
)
async def test_hostile_upstream_json_is_an_invalid_response(
    fake: FakeUpstream, clock: FakeClock, reply: bytes
) -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=reply)))
    ai = DefaultAiApiService(
        Upstream(name="fake", base_url=fake.base_url, api_key=KEY),
        HttpxTransport(client, owns_client=True),
        clock,
        retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(UpstreamError) as caught:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert caught.value.code == "upstream.invalid_response"


async def test_an_error_object_in_a_200_answer_is_the_upstreams_failure(clock: FakeClock) -> None:
    # it was a ChatResult billed on an estimate, and test_model said ok
    error = b'{"error": {"message": "model overloaded", "type": "server_error"}}'
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=error)))
    ai = DefaultAiApiService(
        Upstream(name="fake", base_url="http://x.test/v1", api_key=KEY),
        HttpxTransport(client, owns_client=True),
        clock,
        retry=RetryPolicy(max_attempts=1),
    )
    for call in (
        ai.chat_completion({"model": "fake-model", "messages": MESSAGES}),
        ai.embeddings({"model": "fake-model", "input": "x"}),
    ):
        with pytest.raises(UpstreamError) as caught:
            await call
        assert caught.value.code == "upstream.invalid_response"
        assert "an error object in a successful answer" in str(caught.value)
    checked = await ai.test_model("fake-model")
    assert not checked.ok
    assert checked.error_code == "upstream.invalid_response"


@pytest.mark.parametrize("body", [[], {"messages": MESSAGES}, {"model": 3}, {"model": ""}])
async def test_invalid_bodies_are_refused_before_sending(
    fake: FakeUpstream, clock: FakeClock, body: object
) -> None:
    ai = make_service(fake, clock)
    with pytest.raises(ValidationError) as info:
        await ai.chat_completion(body)  # type: ignore[arg-type]
    assert info.value.code == "upstream.invalid_body"
    assert fake.requests == []


async def test_unserialisable_body_is_refused(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    with pytest.raises(ValidationError):
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES, "temperature": float("nan")})
    assert fake.requests == []


# -- retries ----------------------------------------------------------------------------------


async def test_retries_5xx_then_succeeds(fake: FakeUpstream, clock: FakeClock) -> None:
    sleeps = Sleeps()
    ai = make_service(fake, clock, sleeps=sleeps, attempts=3)
    fake.fail_next(503, times=2)
    result = await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert result.status == 200
    assert len(fake.requests) == 3
    assert sleeps.waits == [0.25, 0.5]


async def test_retry_after_is_honoured(fake: FakeUpstream, clock: FakeClock) -> None:
    sleeps = Sleeps()
    ai = make_service(fake, clock, sleeps=sleeps)
    fake.fail_next(429, retry_after=2)
    await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert sleeps.waits == [2.0]
    assert len(fake.requests) == 2


async def test_retry_after_beyond_cap_fails_fast(fake: FakeUpstream, clock: FakeClock) -> None:
    sleeps = Sleeps()
    ai = make_service(fake, clock, sleeps=sleeps, attempts=5)
    fake.fail_next(429, retry_after=30)
    with pytest.raises(RateLimitedError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.rate_limited"
    assert info.value.retry_after == 30.0
    assert len(fake.requests) == 1
    assert sleeps.waits == []


async def test_persistent_429_becomes_rate_limited(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, attempts=2)
    fake.fail_next(429, retry_after=1, times=2)
    with pytest.raises(RateLimitedError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.retry_after == 1.0
    assert info.value.http_status == 429
    assert len(fake.requests) == 2


async def test_connect_errors_are_retried_then_reported(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, attempts=3)
    fake.refuse_next(times=3)
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.unreachable"
    assert len(fake.requests) == 3


# -- error mapping ----------------------------------------------------------------------------


async def test_upstream_401_is_not_blamed_on_the_client(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, key="sk-wrong-key-123")
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.auth_failed"
    assert info.value.http_status == 502
    assert "sk-wrong-key-123" not in repr(info.value) + str(info.value)
    assert len(fake.requests) == 1  # not retried


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (403, UpstreamError, "upstream.auth_failed"),
        (500, UpstreamError, "upstream.error"),
        (501, UpstreamError, "upstream.error"),
        (400, ValidationError, "upstream.bad_request"),
        (418, UpstreamError, "upstream.error"),
    ],
)
async def test_status_mapping(
    fake: FakeUpstream, clock: FakeClock, status: int, error_type: type[MaasError], code: str
) -> None:
    ai = make_service(fake, clock, attempts=1)
    fake.fail_next(status)
    with pytest.raises(error_type) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == code
    assert_no_secret(info.value)


async def test_unknown_model_is_not_found(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    with pytest.raises(NotFoundError) as info:
        await ai.chat_completion({"model": "nope", "messages": MESSAGES})
    assert info.value.code == "upstream.model_not_found"
    assert info.value.params["model"] == "nope"


async def test_upstream_message_is_scrubbed_of_the_key(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock, attempts=1)
    body = json.dumps({"error": {"message": f"bad request for key {KEY}\x00 too long"}}).encode()
    fake.fail_next(400, body=body)
    with pytest.raises(ValidationError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert "too long" in info.value.params["reason"]
    assert "\x00" not in info.value.params["reason"]
    assert_no_secret(info.value)


@pytest.mark.parametrize("garbage", [b"not json", b"[1, 2]", b""])
async def test_garbage_json_is_invalid_response(fake: FakeUpstream, clock: FakeClock, garbage: bytes) -> None:
    ai = make_service(fake, clock)
    fake.fail_next(200, body=garbage)
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.invalid_response"


async def test_timeout_maps_to_upstream_timeout(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    transport = HttpxTransport(httpx.AsyncClient(transport=httpx.MockTransport(handler)), owns_client=True)
    ai = DefaultAiApiService(
        Upstream(name="slow", base_url="http://slow.test/v1", api_key=KEY), transport, clock
    )
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "m", "messages": MESSAGES})
    assert info.value.code == "upstream.timeout"
    assert_no_secret(info.value)


def test_service_repr_has_no_key(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    assert KEY not in repr(ai)
    assert KEY not in repr(ai.upstream)


# -- circuit breaker ----------------------------------------------------------------------------


async def test_breaker_opens_refuses_and_recovers(fake: FakeUpstream, clock: FakeClock) -> None:
    breaker = CircuitBreaker("fake", clock, failure_threshold=2, window=60, open_duration=30)
    ai = make_service(fake, clock, attempts=1, breaker=breaker)
    body = {"model": "fake-model", "messages": MESSAGES}
    fake.fail_next(500, times=2)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await ai.chat_completion(body)
    assert breaker.state is CircuitState.OPEN
    sent = len(fake.requests)
    with pytest.raises(UnavailableError) as info:
        await ai.chat_completion(body)
    assert info.value.code == "upstream.circuit_open"
    assert info.value.params["retry_after"] == 30.0
    assert len(fake.requests) == sent  # refused without calling the upstream
    clock.advance(30)
    assert breaker.state is CircuitState.HALF_OPEN
    await ai.chat_completion(body)  # the probe succeeds
    assert breaker.state is CircuitState.CLOSED


async def test_client_errors_do_not_trip_the_breaker(fake: FakeUpstream, clock: FakeClock) -> None:
    breaker = CircuitBreaker("fake", clock, failure_threshold=1)
    ai = make_service(fake, clock, attempts=1, breaker=breaker)
    with pytest.raises(NotFoundError):
        await ai.chat_completion({"model": "nope", "messages": MESSAGES})
    fake.fail_next(400)
    with pytest.raises(ValidationError):
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert breaker.state is CircuitState.CLOSED


# -- embeddings, models, checks -----------------------------------------------------------------


async def test_embeddings_usage_reported_and_estimated(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    result = await ai.embeddings({"model": "fake-model", "input": ["one two", "three"]})
    assert len(result.response["data"]) == 2
    assert result.usage == Usage(3, 0, 3, "reported")
    fake.omit_usage = True
    estimated = await ai.embeddings({"model": "fake-model", "input": "abcdefghi"})
    assert estimated.usage == Usage(3, 0, 3, "estimated")


async def test_list_models_and_ping(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    models = await ai.list_models()
    assert models.ids == ("fake-model", "upstream-model")
    assert await ai.ping() is True
    assert fake.requests[-1].method == "GET"


async def test_test_api_key(fake: FakeUpstream, clock: FakeClock) -> None:
    ok = await make_service(fake, clock).test_api_key()
    assert ok.ok
    assert ok.status == 200
    assert ok.model_count == 2
    assert ok.error_code is None
    bad = await make_service(fake, clock, key="sk-wrong-key-456").test_api_key()
    assert not bad.ok
    assert bad.status == 401
    assert bad.error_code == "upstream.auth_failed"
    fake.refuse_next()
    down = await make_service(fake, clock).test_api_key()
    assert not down.ok
    assert down.status is None
    assert down.error_code == "upstream.unreachable"


async def test_test_model(fake: FakeUpstream, clock: FakeClock) -> None:
    ai = make_service(fake, clock)
    ok = await ai.test_model("fake-model")
    assert ok.ok
    assert ok.usage is not None
    assert ok.usage.source == "reported"
    assert fake.requests[-1].json["max_tokens"] == 1
    missing = await ai.test_model("nope")
    assert not missing.ok
    assert missing.error_code == "upstream.model_not_found"


# -- the aiohttp data plane over the loopback server ------------------------------------------------


@pytest.fixture
async def loopback(fake: FakeUpstream, clock: FakeClock) -> AsyncIterator[DefaultAiApiService]:
    async with fake.serve() as base:
        transport = AiohttpTransport()
        try:
            yield DefaultAiApiService(
                Upstream(name="loop", base_url=base, api_key=KEY),
                transport,
                clock,
                retry=RetryPolicy(sleep=Sleeps()),
            )
        finally:
            await transport.aclose()


async def test_aiohttp_chat_embeddings_models(loopback: DefaultAiApiService, fake: FakeUpstream) -> None:
    result = await loopback.chat_completion(
        {"model": "fake-model", "messages": MESSAGES, "api_base": "http://x"}
    )
    assert result.usage.source == "reported"
    assert "api_base" not in fake.requests[-1].json
    assert fake.requests[-1].host is not None
    assert fake.requests[-1].host.startswith("127.0.0.1:")
    assert (await loopback.embeddings({"model": "fake-model", "input": "hi"})).usage.prompt_tokens == 1
    assert "fake-model" in (await loopback.list_models()).ids


async def test_aiohttp_retries_and_errors(loopback: DefaultAiApiService, fake: FakeUpstream) -> None:
    fake.fail_next(502, times=2)
    assert (await loopback.chat_completion({"model": "fake-model", "messages": MESSAGES})).status == 200
    assert len(fake.requests) == 3
    fake.fail_next(429, retry_after=99)
    with pytest.raises(RateLimitedError):
        await loopback.chat_completion({"model": "fake-model", "messages": MESSAGES})
    fake.fail_next(200, body=b"{broken")
    with pytest.raises(UpstreamError) as info:
        await loopback.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.invalid_response"
