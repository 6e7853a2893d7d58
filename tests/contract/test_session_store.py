"""One contract for every SessionStore: memory, SQLite, PostgreSQL and real Redis.

The contract is exercised both directly on the store and through ``DefaultSessionService``, so the
service's guarantees (expiry, rotation, single-use states) hold on every backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from maaskit.errors import UnauthenticatedError
from maaskit.services.sessions import DefaultSessionService, session_digest
from maaskit.storage.memory.sessions import MemorySessionStore
from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord, SessionStore
from maaskit.storage.redis.client import create_redis
from maaskit.storage.redis.sessions import RedisSessionStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.sessions import SqlSessionStore
from maaskit.testing.clock import FakeClock


@pytest.fixture
async def store(store_backend: tuple[str, str, str]) -> AsyncIterator[SessionStore]:
    kind, url, prefix = store_backend
    if kind == "memory":
        yield MemorySessionStore()
    elif kind in ("sqlite", "postgres"):
        db = Database(url)
        await db.migrate()
        yield SqlSessionStore(db)
        if kind == "postgres":
            await db.downgrade("base")
        await db.aclose()
    else:
        client = create_redis(url)
        yield RedisSessionStore(client, prefix=prefix)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def service(store: SessionStore, clock: FakeClock) -> DefaultSessionService:
    return DefaultSessionService(store, clock=clock, csrf_key=b"k" * 16 + b"0123456789abcdef")


def record(clock: FakeClock, digest: str = "d" * 64, user: str = "u1", **data: object) -> SessionRecord:
    now = clock.now()
    return SessionRecord(
        digest=digest,
        user_id=user,
        data=dict(data),
        created_at=now,
        last_seen_at=now,
        idle_expires_at=now + timedelta(minutes=30),
        absolute_expires_at=now + timedelta(hours=12),
    )


# -- the store contract ------------------------------------------------------------------------


async def test_create_get_round_trip(store: SessionStore, clock: FakeClock) -> None:
    data = {"locale": "de", "n": 12345678901234567, "nested": {"empty": {}, "list": [1, "x", None, True]}}
    rec = record(clock, **data)
    await store.create(rec)
    got = await store.get(rec.digest)
    assert got == rec
    assert dict(got.data) == data
    assert await store.get("e" * 64) is None


async def test_touch_update_delete(store: SessionStore, clock: FakeClock) -> None:
    rec = record(clock)
    await store.create(rec)
    later = clock.now() + timedelta(minutes=10)
    assert await store.touch(rec.digest, later, later + timedelta(minutes=30)) is True
    got = await store.get(rec.digest)
    assert got is not None
    assert (got.last_seen_at, got.idle_expires_at) == (later, later + timedelta(minutes=30))
    assert await store.update_data(rec.digest, {"a": [1, 2]}) is True
    got = await store.get(rec.digest)
    assert got is not None
    assert dict(got.data) == {"a": [1, 2]}
    assert got.idle_expires_at == later + timedelta(minutes=30)
    assert await store.delete(rec.digest) is True
    assert await store.delete(rec.digest) is False
    assert await store.touch(rec.digest, later, later) is False
    assert await store.update_data(rec.digest, {}) is False
    assert await store.get(rec.digest) is None


async def test_replace_is_atomic_and_single(store: SessionStore, clock: FakeClock) -> None:
    old = record(clock, "a" * 64, x=1)
    await store.create(old)
    new = record(clock, "b" * 64, x=1)
    assert await store.replace(old.digest, new) is True
    assert await store.get(old.digest) is None
    assert await store.get(new.digest) == new
    assert await store.replace(old.digest, record(clock, "c" * 64)) is False
    assert await store.get("c" * 64) is None
    # The user index follows the rotation.
    assert await store.delete_user("u1") == 1
    assert await store.get(new.digest) is None


async def test_delete_user(store: SessionStore, clock: FakeClock) -> None:
    for i, user in enumerate(["u1", "u1", "u2"]):
        await store.create(record(clock, str(i) * 64, user))
    assert await store.delete_user("u1") == 2
    assert await store.delete_user("u1") == 0
    assert await store.get("0" * 64) is None
    assert await store.get("2" * 64) is not None


async def test_oauth_state_single_use(store: SessionStore, clock: FakeClock) -> None:
    now = clock.now()
    rec = OAuthStateRecord(
        digest="s" * 64,
        payload={"verifier": "v" * 64},
        created_at=now,
        expires_at=now + timedelta(minutes=10),
    )
    await store.put_state(rec)
    got = await store.take_state(rec.digest, now)
    assert got == rec
    assert dict(got.payload) == {"verifier": "v" * 64}
    assert await store.take_state(rec.digest, now) is None
    assert await store.take_state("t" * 64, now) is None


async def test_oauth_state_expires(store: SessionStore, clock: FakeClock) -> None:
    now = clock.now()
    rec = OAuthStateRecord(
        digest="s" * 64, payload={}, created_at=now, expires_at=now + timedelta(minutes=10)
    )
    await store.put_state(rec)
    assert await store.take_state(rec.digest, now + timedelta(minutes=10)) is None
    assert await store.take_state(rec.digest, now) is None  # an expired take still consumed it


async def test_concurrent_takes_exactly_one_wins(store: SessionStore, clock: FakeClock) -> None:
    now = clock.now()
    rec = OAuthStateRecord(
        digest="s" * 64, payload={}, created_at=now, expires_at=now + timedelta(minutes=10)
    )
    await store.put_state(rec)
    results = await asyncio.gather(*(store.take_state(rec.digest, now) for _ in range(6)))
    assert sum(r is not None for r in results) == 1


async def test_cleanup_expired(store: SessionStore, clock: FakeClock) -> None:
    now = clock.now()
    await store.create(record(clock, "a" * 64))
    short = record(clock, "b" * 64)
    await store.create(short)
    await store.touch(short.digest, now, now + timedelta(minutes=1))
    await store.put_state(
        OAuthStateRecord(digest="s" * 64, payload={}, created_at=now, expires_at=now + timedelta(minutes=10))
    )
    assert await store.cleanup_expired(now) == 0
    assert await store.cleanup_expired(now + timedelta(minutes=11)) == 2
    assert await store.get("a" * 64) is not None
    assert await store.get("b" * 64) is None
    await store.ping()


# -- the service on every backend --------------------------------------------------------------


async def test_service_lifecycle(
    service: DefaultSessionService, store: SessionStore, clock: FakeClock
) -> None:
    session, sid = await service.create("user-1", data={"theme": "dark"})
    assert await store.get(session_digest(sid)) is not None
    clock.advance(minutes=29)
    assert (await service.validate(sid)).data == {"theme": "dark"}
    clock.advance(minutes=29)  # slid: still alive 58 minutes after creation
    await service.validate(sid)
    rotated, new_sid = await service.rotate(sid)
    assert rotated.created_at == session.created_at
    with pytest.raises(UnauthenticatedError):
        await service.validate(sid)
    assert (await service.validate(new_sid)).user_id == "user-1"
    clock.advance(minutes=31)
    with pytest.raises(UnauthenticatedError) as info:
        await service.validate(new_sid)
    assert info.value.code == "session.expired"
    assert await store.get(session_digest(new_sid)) is None


async def test_service_absolute_timeout(service: DefaultSessionService, clock: FakeClock) -> None:
    _, sid = await service.create("user-1")
    for _ in range(24):
        clock.advance(minutes=29)
        await service.validate(sid)
    assert (await service.validate(sid)).expires_at == clock.now().replace(hour=12, minute=0)
    clock.advance(minutes=29)  # 11 h 36 min + 29 min > 12 h
    with pytest.raises(UnauthenticatedError) as info:
        await service.validate(sid)
    assert info.value.code == "session.expired"


async def test_service_oauth_state(service: DefaultSessionService, clock: FakeClock) -> None:
    state = await service.create_oauth_state({"code_verifier": "x" * 50, "redirect": "/after"})
    data = await service.consume_oauth_state(state.state)
    assert data.nonce == state.nonce
    assert data.payload == {"code_verifier": "x" * 50, "redirect": "/after"}
    with pytest.raises(UnauthenticatedError):
        await service.consume_oauth_state(state.state)
    late = await service.create_oauth_state()
    clock.advance(minutes=10)
    with pytest.raises(UnauthenticatedError) as info:
        await service.consume_oauth_state(late.state)
    assert info.value.code == "session.invalid_state"


async def test_service_destroy_user_sessions(service: DefaultSessionService) -> None:
    _, a = await service.create("user-1")
    _, b = await service.create("user-1")
    _, c = await service.create("user-2")
    assert await service.destroy_user_sessions("user-1") == 2
    assert await service.get(a) is None
    assert await service.get(b) is None
    assert await service.get(c) is not None
    assert await service.destroy(c) is True
    assert await service.destroy(c) is False


async def test_service_concurrent_rotation_exactly_one_wins(service: DefaultSessionService) -> None:
    _, sid = await service.create("user-1")
    results = await asyncio.gather(service.rotate(sid), service.rotate(sid), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, UnauthenticatedError) for r in results if isinstance(r, BaseException))
