"""DefaultAiApiService drawing from a CredentialPool, end to end against FakeUpstream."""

from __future__ import annotations

import httpx
import pytest

from maaskit.errors import RateLimitedError, UnavailableError, UpstreamError
from maaskit.services.ai_api import DefaultAiApiService
from maaskit.services.credentials import DefaultCredentialPool
from maaskit.services.upstream import HttpxTransport, RetryPolicy, Upstream
from maaskit.storage.memory.credentials import MemoryCredentialStore
from maaskit.testing.clock import FakeClock
from maaskit.testing.fake_upstream import FakeUpstream

GOOD = "sk-good-key-123456"
BAD = "sk-revoked-key-654321"
MESSAGES = [{"role": "user", "content": "Say hello"}]


async def _noop_sleep(seconds: float) -> None:
    return None


async def setup(
    clock: FakeClock, fake: FakeUpstream, **pool_kwargs: object
) -> tuple[DefaultAiApiService, DefaultCredentialPool]:
    pool = DefaultCredentialPool(MemoryCredentialStore(), clock=clock, **pool_kwargs)  # type: ignore[arg-type]
    await pool.load()
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    upstream = Upstream(name="fake", base_url=fake.base_url)  # no api_key: the pool supplies it
    ai = DefaultAiApiService(
        upstream, transport, clock, retry=RetryPolicy(sleep=_noop_sleep), credentials=pool
    )
    return ai, pool


async def test_bad_credential_cools_down_and_requests_succeed_on_the_good_one(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD, models=("fake-model", "fake-prod"))
    ai, pool = await setup(clock, fake, model_map={"gpt-4o": {"fake": "fake-prod"}})
    bad = await pool.add("fake", BAD, name="revoked")
    good = await pool.add("fake", GOOD, name="good")
    for _ in range(5):
        result = await ai.chat_completion({"model": "gpt-4o", "messages": MESSAGES})
        assert result.model == "gpt-4o"
        assert result.usage.source == "reported"
    # the first request tried the bad key, got 401 and moved on within the same attempt
    assert [r.authorized for r in fake.requests] == [False, True, True, True, True, True]
    assert all(r.json["model"] == "fake-prod" for r in fake.requests)
    stats = {s.credential_id: s for s in pool.stats()}
    assert stats[bad.id].failures == {401: 1}
    assert not stats[bad.id].available
    assert stats[good.id].successes == 5
    assert stats[good.id].in_flight == 0
    assert stats[good.id].tokens == 5 * result.usage.total_tokens
    assert stats[bad.id].in_flight == 0


async def test_stream_and_embeddings_hold_and_release_their_lease(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    ai, pool = await setup(clock, fake)
    cred = await pool.add("fake", GOOD)
    stream = ai.stream_chat_completion({"model": "fake-model", "messages": MESSAGES})
    async with stream:
        assert pool.stats()[0].in_flight == 1
        chunks = [c async for c in stream]
    assert chunks
    assert stream.usage is not None
    emb = await ai.embeddings({"model": "fake-model", "input": "hello"})
    models = await ai.list_models()
    assert "fake-model" in models.ids
    (stats,) = pool.stats()
    assert stats.credential_id == cred.id
    assert (stats.in_flight, stats.requests, stats.successes) == (0, 3, 3)
    assert stats.tokens == stream.usage.total_tokens + emb.usage.total_tokens
    check = await ai.test_api_key()
    assert check.ok


async def test_all_credentials_rejected(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    ai, pool = await setup(clock, fake, auth_cooldown=60)
    await pool.add("fake", BAD)
    await pool.add("fake", "sk-also-bad-999999")
    with pytest.raises(UpstreamError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.auth_failed"
    assert len(fake.requests) == 2  # both tried once
    with pytest.raises(UnavailableError) as exhausted:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert exhausted.value.code == "credentials.exhausted"
    assert exhausted.value.params["retry_after"] == 60
    assert len(fake.requests) == 2  # nothing sent
    assert ai.breaker.state.value == "closed"
    clock.advance(seconds=60)
    check = await ai.test_api_key()
    assert not check.ok
    assert check.error_code == "upstream.auth_failed"


async def test_rate_limited_credential_moves_on_with_retry_after(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    ai, pool = await setup(clock, fake)
    first = await pool.add("fake", GOOD, name="first")
    second = await pool.add("fake", GOOD, name="second")
    fake.fail_next(429, retry_after=20)
    result = await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert result.status == 200
    stats = {s.credential_id: s for s in pool.stats()}
    assert stats[first.id].failures == {429: 1}
    assert stats[first.id].cooldown_until is not None
    assert stats[second.id].successes == 1
    # first is back after its Retry-After
    clock.advance(seconds=20)
    seen = set()
    for _ in range(2):
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    seen = {s.credential_id for s in pool.stats() if s.successes}
    assert seen == {first.id, second.id}


async def test_upstream_error_message_never_echoes_the_pool_secret(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    ai, pool = await setup(clock, fake)
    await pool.add("fake", GOOD)
    fake.fail_next(400, body=b'{"error": {"message": "bad key sk-good-key-123456 used"}}')
    with pytest.raises(Exception) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert GOOD not in str(info.value.params)
    assert "***" in info.value.params["reason"]


async def test_server_errors_retry_and_count_on_the_credential(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    ai, pool = await setup(clock, fake)
    await pool.add("fake", GOOD)
    fake.fail_next(503)
    await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    (stats,) = pool.stats()
    assert stats.failures == {503: 1}
    assert stats.successes == 1
    assert stats.available


async def test_without_pool_behaviour_is_unchanged(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    ai = DefaultAiApiService(Upstream(name="fake", base_url=fake.base_url, api_key=GOOD), transport, clock)
    assert ai.credentials is None
    result = await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert result.status == 200
    assert fake.requests[0].authorized


# -- review fixes ---------------------------------------------------------------------------


class _Sleeps:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds=seconds)


async def pool_service(
    clock: FakeClock, fake: FakeUpstream, sleeps: _Sleeps, **pool_kwargs: object
) -> tuple[DefaultAiApiService, DefaultCredentialPool]:
    pool = DefaultCredentialPool(MemoryCredentialStore(), clock=clock, **pool_kwargs)  # type: ignore[arg-type]
    await pool.load()
    transport = HttpxTransport(httpx.AsyncClient(transport=fake.httpx_transport()), owns_client=True)
    ai = DefaultAiApiService(
        Upstream(name="fake", base_url=fake.base_url),
        transport,
        clock,
        retry=RetryPolicy(sleep=sleeps, retry_after_cap=10),
        credentials=pool,
    )
    return ai, pool


async def test_a_lone_rate_limited_credential_gives_the_upstreams_429_not_exhausted(clock: FakeClock) -> None:
    # it used to sleep ~0.5 s, retry into a credential cooling down for 30 s and fail with
    # credentials.exhausted (503)
    fake = FakeUpstream(api_key=GOOD)
    sleeps = _Sleeps(clock)
    ai, pool = await pool_service(clock, fake, sleeps)  # rate_limit_cooldown: 30 s
    await pool.add("fake", GOOD)
    fake.fail_next(429)  # no Retry-After
    with pytest.raises(RateLimitedError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.rate_limited"
    assert info.value.params["retry_after"] == 30
    assert sleeps.waits == []  # no sleep into a certain failure
    assert len(fake.requests) == 1
    (stats,) = pool.stats()
    assert (stats.in_flight, dict(stats.failures)) == (0, {429: 1})


async def test_a_short_cooldown_is_waited_out_and_retried(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    sleeps = _Sleeps(clock)
    ai, pool = await pool_service(clock, fake, sleeps, rate_limit_cooldown=2)
    await pool.add("fake", GOOD)
    fake.fail_next(429)
    result = await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert result.status == 200
    assert sleeps.waits == [2.0]  # the cooldown, not the 0.25-0.5 s backoff
    (stats,) = pool.stats()
    assert (stats.successes, stats.in_flight) == (1, 0)


async def test_two_rate_limited_credentials_fail_fast_with_the_cooldown(clock: FakeClock) -> None:
    fake = FakeUpstream(api_key=GOOD)
    sleeps = _Sleeps(clock)
    ai, pool = await pool_service(clock, fake, sleeps)
    await pool.add("fake", GOOD, name="a")
    await pool.add("fake", GOOD, name="b")
    fake.fail_next(429, times=2)
    with pytest.raises(RateLimitedError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.params["retry_after"] == 30
    assert (len(fake.requests), sleeps.waits) == (2, [])


async def test_an_overflowing_retry_after_date_releases_the_lease(clock: FakeClock) -> None:
    # parse_retry_after raised OverflowError inside the attempt: the lease was never released
    fake = FakeUpstream(api_key=GOOD)
    sleeps = _Sleeps(clock)
    ai, pool = await pool_service(clock, fake, sleeps)
    await pool.add("fake", GOOD)
    fake.fail_next(429, retry_after="Mon, 01 Jan 99999999999999 00:00:00 GMT")
    with pytest.raises(RateLimitedError) as info:
        await ai.chat_completion({"model": "fake-model", "messages": MESSAGES})
    assert info.value.code == "upstream.rate_limited"
    (stats,) = pool.stats()
    assert (stats.in_flight, dict(stats.failures), stats.available) == (0, {429: 1}, False)
