"""The cache contract on MemoryCache (FakeClock) and RedisCache (real Redis), plus backend specifics."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.cache import CacheService
from maaskit.storage.memory.cache import MemoryCache
from maaskit.storage.redis.cache import RedisCache
from maaskit.storage.redis.client import create_redis, ping, redact_url
from maaskit.testing.clock import FakeClock
from maaskit.testing.contracts.cache import Advance, CacheContract


class TestMemoryCache(CacheContract):
    @pytest.fixture
    async def cache(self, clock: FakeClock) -> MemoryCache:
        return MemoryCache(max_entries=1000, default_ttl=None, clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        return advance


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = create_redis(redis_url)
    yield client
    async for name in client.scan_iter(match=redis_prefix + "*"):
        await client.unlink(name)
    await client.aclose()


class TestRedisCache(CacheContract):
    @pytest.fixture
    async def cache(self, redis_client: redis_asyncio.Redis, redis_prefix: str) -> RedisCache:
        return RedisCache(redis_client, prefix=redis_prefix, default_ttl=None)

    @pytest.fixture
    def advance(self, redis_client: redis_asyncio.Redis, redis_prefix: str) -> Advance:
        """Moves this test's keys forward in time by shortening their remaining TTLs (no sleeping)."""

        async def advance(seconds: float) -> None:
            step = math.ceil(seconds * 1000)
            async for name in redis_client.scan_iter(match=redis_prefix + "*"):
                remaining = await redis_client.pttl(name)
                if remaining < 0:  # -1: no expiry, -2: gone meanwhile
                    continue
                if remaining <= step:
                    await redis_client.unlink(name)
                else:
                    await redis_client.pexpire(name, remaining - step)

        return advance


# -- MemoryCache specifics ---------------------------------------------------------------------


async def test_memory_default_ttl_applies_when_none_given(clock: FakeClock) -> None:
    cache = MemoryCache(default_ttl=30, clock=clock)
    await cache.set("k", b"v")
    await cache.incr("n")
    clock.advance(29)
    assert await cache.get_many(["k", "n"]) == {"k": b"v", "n": b"1"}
    clock.advance(2)
    assert await cache.get_many(["k", "n"]) == {}


async def test_memory_explicit_ttl_wins_over_default(clock: FakeClock) -> None:
    cache = MemoryCache(default_ttl=30, clock=clock)
    await cache.set("k", b"v", ttl=100)
    clock.advance(50)
    assert await cache.get("k") == b"v"


async def test_memory_evicts_least_recently_used(clock: FakeClock) -> None:
    cache = MemoryCache(max_entries=2, default_ttl=None, clock=clock)
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    assert await cache.get("a") == b"1"  # "b" is now the least recently used
    await cache.set("c", b"3")
    assert await cache.get_many(["a", "b", "c"]) == {"a": b"1", "c": b"3"}


@pytest.mark.parametrize("max_entries", [0, -1, True, 1.5])
def test_memory_refuses_bad_max_entries(max_entries: object) -> None:
    with pytest.raises(ValidationError) as exc:
        MemoryCache(max_entries=max_entries)  # type: ignore[arg-type]
    assert exc.value.code == "config.invalid"


@pytest.mark.parametrize("ttl", [0, -5, float("nan")])
def test_bad_default_ttl_is_refused(ttl: float) -> None:
    with pytest.raises(ValidationError) as exc:
        MemoryCache(default_ttl=ttl)
    assert exc.value.code == "cache.invalid_ttl"


async def test_memory_aclose_drops_entries(clock: FakeClock) -> None:
    cache = MemoryCache(clock=clock)
    await cache.set("k", b"v")
    await cache.aclose()
    assert await cache.get("k") is None


def test_backends_conform_to_protocol() -> None:
    assert isinstance(MemoryCache(), CacheService)
    fake_client = redis_asyncio.Redis()  # no connection is opened
    assert isinstance(RedisCache(fake_client), CacheService)


# -- RedisCache specifics ----------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_ttls_are_real_redis_expiries(
    redis_client: redis_asyncio.Redis, redis_prefix: str
) -> None:
    cache = RedisCache(redis_client, prefix=redis_prefix, default_ttl=30)
    await cache.set("explicit", b"v", ttl=5)
    await cache.set("default", b"v")
    await cache.set("tiny", b"v", ttl=0.0001)  # rounds up to 1 ms, never to "no expiry"
    await cache.incr("counter", ttl=60)
    assert 4000 < await redis_client.pttl(redis_prefix + "explicit") <= 5000
    assert 29_000 < await redis_client.pttl(redis_prefix + "default") <= 30_000
    assert await redis_client.pttl(redis_prefix + "tiny") in (-2, 0, 1)
    assert 59_000 < await redis_client.pttl(redis_prefix + "counter") <= 60_000
    await redis_client.pexpire(redis_prefix + "counter", 1000)
    await cache.incr("counter", ttl=60)  # an existing counter keeps its window
    assert await redis_client.pttl(redis_prefix + "counter") <= 1000


@pytest.mark.redis
async def test_redis_without_default_ttl_stores_without_expiry(
    redis_client: redis_asyncio.Redis, redis_prefix: str
) -> None:
    cache = RedisCache(redis_client, prefix=redis_prefix, default_ttl=None)
    await cache.set("k", b"v")
    await cache.incr("n")
    assert await redis_client.pttl(redis_prefix + "k") == -1
    assert await redis_client.pttl(redis_prefix + "n") == -1


@pytest.mark.redis
async def test_redis_keys_live_under_the_prefix(redis_client: redis_asyncio.Redis, redis_prefix: str) -> None:
    cache = RedisCache(redis_client, prefix=redis_prefix + "c:", default_ttl=None)
    other = redis_prefix + "other"
    await redis_client.set(other, b"untouched")
    await cache.set("k", b"v")
    assert await redis_client.get(redis_prefix + "c:k") == b"v"
    assert await cache.clear_prefix("") == 1
    assert await redis_client.get(other) == b"untouched"


async def test_redis_refuses_clearing_a_whole_database_without_prefix() -> None:
    cache = RedisCache(redis_asyncio.Redis(), prefix="")
    with pytest.raises(ValidationError) as exc:
        await cache.clear_prefix("")
    assert exc.value.code == "cache.invalid_key"


def test_redis_refuses_a_decoding_client() -> None:
    with pytest.raises(ValidationError) as exc:
        RedisCache(redis_asyncio.Redis(decode_responses=True))
    assert "decode_responses" in str(exc.value)


async def test_redis_unreachable_is_unavailable_without_leaking_the_password() -> None:
    secret = "hunter2-very-secret-pw"
    client = create_redis(f"redis://user:{secret}@127.0.0.1:1/0", retries=0, socket_connect_timeout=1)
    cache = RedisCache(client, close_client=True)
    for call in (cache.ping(), cache.get("k"), cache.set("k", b"v"), cache.incr("k", ttl=5), ping(client)):
        with pytest.raises(UnavailableError) as exc:
            await call
        assert exc.value.code in ("cache.unavailable", "redis.unavailable")
        assert exc.value.http_status == 503
        chain: list[BaseException] = []
        err: BaseException | None = exc.value
        while err is not None:
            chain.append(err)
            err = err.__cause__ or err.__context__
        for e in chain:
            assert secret not in str(e)
            assert secret not in repr(e)
    await cache.aclose()


# -- create_redis / redact_url -----------------------------------------------------------------


def test_create_redis_applies_fast_fail_defaults() -> None:
    client = create_redis("redis://127.0.0.1:6379/3")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2.0
    assert kwargs["socket_connect_timeout"] == 2.0
    assert kwargs["health_check_interval"] == 30
    assert kwargs["db"] == 3
    assert kwargs["decode_responses"] is False
    assert client.connection_pool.max_connections == 100


def test_create_redis_options_override_defaults() -> None:
    client = create_redis("redis://127.0.0.1:6379/0", socket_timeout=0.5, max_connections=7)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    assert client.connection_pool.max_connections == 7


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("http://:pw-secret-123@host/0", {}),
        ("redis://:pw-secret-123@127.0.0.1/0", {"decode_responses": True}),
        ("redis://:pw-secret-123@127.0.0.1/0", {"retries": -1}),
    ],
)
def test_create_redis_refuses_bad_input_without_the_password(url: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as exc:
        create_redis(url, **kwargs)  # type: ignore[arg-type]
    assert exc.value.code == "config.invalid"
    assert "pw-secret-123" not in str(exc.value)
    assert "pw-secret-123" not in repr(exc.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host/1?ssl_cert_reqs=none", "rediss://user:***@host/1?ssl_cert_reqs=none"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://u:p@[::1]:6379", "redis://u:***@[::1]:6379"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.redis
async def test_ping_real_redis(redis_url: str) -> None:
    client = create_redis(redis_url)
    try:
        await ping(client)
    finally:
        await client.aclose()
