"""Cache coherence: the in-flight stale write (LiteLLM #25553) and cross-replica invalidation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from maaskit.errors import UnauthenticatedError
from maaskit.services.api_keys import DefaultApiKeyService
from maaskit.storage.memory.api_keys import MemoryApiKeyStore, MemoryKeyInvalidationBus
from maaskit.storage.ports.api_keys import ApiKeyRecord
from maaskit.storage.redis.api_keys import RedisKeyInvalidationBus
from maaskit.testing.clock import FakeClock

PEPPER = b"r" * 32
BOUND = 5.0  # generous timeout for message delivery; the documented bound is 1 s


class PausingStore(MemoryApiKeyStore):
    """Reads the record, then waits before returning it (an in-flight request mid-lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause_next = False
        self.read_done = asyncio.Event()
        self.resume = asyncio.Event()

    async def find_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        record = await super().find_by_digest(digest)
        if self.pause_next:
            self.pause_next = False
            self.read_done.set()
            await self.resume.wait()
        return record


async def _refused(keys: DefaultApiKeyService, secret: str) -> str:
    with pytest.raises(UnauthenticatedError) as info:
        await keys.validate(secret)
    return info.value.code


async def test_in_flight_read_cannot_write_a_revoked_key_back_into_the_cache(clock: FakeClock) -> None:
    # LiteLLM #25553: a request read the key, a revoke ran, the request then cached the stale key
    # and the revoked key worked again until the cache entry expired.
    store = PausingStore()
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER)
    created = await keys.create("u", name="k")
    store.pause_next = True
    in_flight = asyncio.create_task(keys.validate(created.secret))
    await store.read_done.wait()  # the request holds the pre-revoke record
    await keys.revoke(created.key.id)
    store.resume.set()
    stale = await in_flight
    assert stale.revoked_at is None  # it answered with what it read (linearised before the revoke)
    assert keys.cached_keys == 0  # but did not cache it
    assert await _refused(keys, created.secret) == "api_key.revoked"


async def test_in_flight_read_on_another_replica_is_not_cached_either(clock: FakeClock) -> None:
    store = PausingStore()
    bus = MemoryKeyInvalidationBus()
    a = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus)
    b = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus)
    async with a, b:
        created = await a.create("u", name="k")
        store.pause_next = True
        in_flight = asyncio.create_task(b.validate(created.secret))
        await store.read_done.wait()
        await a.revoke(created.key.id)
        store.resume.set()
        await in_flight
        assert await _refused(b, created.secret) == "api_key.revoked"


async def test_without_a_bus_another_replica_serves_its_cache_until_ttl(clock: FakeClock) -> None:
    store = MemoryApiKeyStore()
    a = DefaultApiKeyService(store, clock, pepper=PEPPER, cache_ttl=30)
    b = DefaultApiKeyService(store, clock, pepper=PEPPER, cache_ttl=30)
    created = await a.create("u", name="k")
    await b.validate(created.secret)
    await a.revoke(created.key.id)
    assert (await b.validate(created.secret)).revoked_at is None  # stale: why the bus exists
    clock.advance(30)
    assert await _refused(b, created.secret) == "api_key.revoked"


@pytest.mark.parametrize("action", ["revoke", "disable", "rotate_now", "budget"])
async def test_memory_bus_invalidates_the_other_replica_at_once(clock: FakeClock, action: str) -> None:
    store = MemoryApiKeyStore()
    bus = MemoryKeyInvalidationBus()
    a = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus)
    b = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus)
    async with a, b:
        created = await a.create("u", name="k", budget_micros=1)
        await b.validate(created.secret)
        assert b.cached_keys == 1
        if action == "revoke":
            await a.revoke(created.key.id)
            assert await _refused(b, created.secret) == "api_key.revoked"
        elif action == "disable":
            await a.set_enabled(created.key.id, False)
            assert await _refused(b, created.secret) == "api_key.disabled"
        elif action == "rotate_now":
            await a.rotate(created.key.id, grace_seconds=0)
            assert await _refused(b, created.secret) == "api_key.unknown"
        else:
            await a.update_budget(created.key.id, 99)
            assert (await b.validate(created.secret)).budget_micros == 99
    assert bus.published == [created.key.id]


async def test_a_reconnect_message_clears_the_whole_cache(clock: FakeClock) -> None:
    bus = MemoryKeyInvalidationBus()
    keys = DefaultApiKeyService(MemoryApiKeyStore(), clock, pepper=PEPPER, invalidation=bus)
    async with keys:
        for i in range(3):
            await keys.validate((await keys.create("u", name=str(i))).secret)
        assert keys.cached_keys == 3
        bus.clear_all()
        assert keys.cached_keys == 0
    bus.clear_all()  # after stop() the service no longer listens


async def test_a_failing_publish_does_not_undo_the_revoke(clock: FakeClock) -> None:
    class BrokenBus(MemoryKeyInvalidationBus):
        async def publish(self, key_id: str) -> None:
            raise ConnectionError("redis down")

    keys = DefaultApiKeyService(MemoryApiKeyStore(), clock, pepper=PEPPER, invalidation=BrokenBus())
    created = await keys.create("u", name="k")
    await keys.validate(created.secret)
    await keys.revoke(created.key.id)
    assert await _refused(keys, created.secret) == "api_key.revoked"


# --- real Redis ------------------------------------------------------------------------------


@pytest.fixture
async def redis_clients(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Redis, Redis]]:
    a = Redis.from_url(redis_url, client_name=f"{redis_prefix.replace(':', '-')}a")
    b = Redis.from_url(redis_url, client_name=f"{redis_prefix.replace(':', '-')}b")
    yield a, b
    await a.aclose()
    await b.aclose()


async def _wait_for(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), BOUND)


@pytest.mark.redis
async def test_redis_bus_revoke_on_a_is_refused_by_b(
    redis_clients: tuple[Redis, Redis], redis_prefix: str, clock: FakeClock
) -> None:
    channel = f"{redis_prefix}api_keys:invalidate"
    store = MemoryApiKeyStore()
    bus_a = RedisKeyInvalidationBus(redis_clients[0], channel=channel)
    bus_b = RedisKeyInvalidationBus(redis_clients[1], channel=channel)
    a = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus_a)
    b = DefaultApiKeyService(store, clock, pepper=PEPPER, invalidation=bus_b)
    async with a, b:
        created = await a.create("u", name="k")
        await b.validate(created.secret)
        assert b.cached_keys == 1
        delivered = asyncio.Event()
        bus_b.add_listener(lambda key_id: delivered.set() if key_id == created.key.id else None)
        await a.revoke(created.key.id)
        await _wait_for(delivered)  # b's service listener ran before ours (registered first)
        assert b.cached_keys == 0
        assert await _refused(b, created.secret) == "api_key.revoked"
    assert not bus_a.running
    assert not bus_b.running


@pytest.mark.redis
async def test_redis_bus_clears_the_cache_after_a_lost_connection(
    redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    name = f"{redis_prefix.replace(':', '-')}victim"
    client = Redis.from_url(redis_url, client_name=name)
    admin = Redis.from_url(redis_url)
    bus = RedisKeyInvalidationBus(client, channel=f"{redis_prefix}api_keys:invalidate", close_client=True)
    keys = DefaultApiKeyService(MemoryApiKeyStore(), clock, pepper=PEPPER, invalidation=bus)
    try:
        async with keys:
            await keys.validate((await keys.create("u", name="k")).secret)
            assert keys.cached_keys == 1
            assert bus.subscriptions == 1
            cleared = asyncio.Event()
            bus.add_listener(lambda key_id: cleared.set() if key_id is None else None)
            # Kill only this test's pub/sub connection (found by its unique client name).
            clients = await admin.client_list(_type="pubsub")
            ids = [c["id"] for c in clients if c.get("name") == name]
            assert ids
            for client_id in ids:
                await admin.client_kill_filter(_id=client_id)
            await _wait_for(cleared)
            assert keys.cached_keys == 0
    finally:
        await admin.aclose()


@pytest.mark.redis
async def test_redis_bus_start_fails_cleanly_without_a_server(clock: FakeClock) -> None:
    from maaskit.errors import UnavailableError

    client = Redis.from_url("redis://127.0.0.1:1/0")  # nothing listens on port 1
    bus = RedisKeyInvalidationBus(client, start_timeout=0.3, close_client=True)
    with pytest.raises(UnavailableError):
        await bus.start()
    assert not bus.running
    with pytest.raises(UnavailableError):
        await bus.publish("key_x")
