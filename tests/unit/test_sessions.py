"""SessionService on the memory store: ids, digests, CSRF, validation rules, failing closed."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from maaskit.errors import ForbiddenError, UnauthenticatedError, UnavailableError, ValidationError
from maaskit.services.sessions import DefaultSessionService, SessionService, session_digest
from maaskit.storage.memory.sessions import MemorySessionStore
from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord, SessionStore
from maaskit.storage.redis.client import create_redis
from maaskit.storage.redis.sessions import RedisSessionStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.sessions import SqlSessionStore
from maaskit.testing.clock import FakeClock

KEY = secrets.token_bytes(32)


@pytest.fixture
def store() -> MemorySessionStore:
    return MemorySessionStore()


@pytest.fixture
def svc(store: MemorySessionStore, clock: FakeClock) -> DefaultSessionService:
    return DefaultSessionService(store, clock=clock, csrf_key=KEY)


def test_protocol_conformance(svc: DefaultSessionService) -> None:
    assert isinstance(svc, SessionService)
    assert isinstance(MemorySessionStore(), SessionStore)


async def test_ids_are_random_256_bit_and_only_digests_are_stored(
    svc: DefaultSessionService, store: MemorySessionStore
) -> None:
    ids = set()
    for _ in range(50):
        _, sid = await svc.create("user-1")
        assert len(sid) == 43  # token_urlsafe(32)
        ids.add(sid)
    assert len(ids) == 50
    stored = {r.digest for r in store._sessions.values()}
    assert stored == {hashlib.sha256(i.encode()).hexdigest() for i in ids}
    assert not ids & stored
    assert all(sid not in repr(r) for r in store._sessions.values() for sid in ids)


async def test_session_values_and_repr(svc: DefaultSessionService, clock: FakeClock) -> None:
    session, sid = await svc.create("user-1", data={"token_hint": "abc"})
    assert session.user_id == "user-1"
    assert session.created_at == clock.now()
    assert session.expires_at == clock.now() + timedelta(minutes=30)
    assert session.absolute_expires_at == clock.now() + timedelta(hours=12)
    assert sid not in repr(session)
    assert "abc" not in repr(session)  # data may be sensitive: not in the repr


async def test_data_is_copied_and_updatable(svc: DefaultSessionService) -> None:
    data: dict[str, Any] = {"cart": [1]}
    _, sid = await svc.create("user-1", data=data)
    data["cart"].append(2)
    session = await svc.validate(sid)
    assert session.data == {"cart": [1]}
    session.data["cart"].append(3)  # type: ignore[index]
    assert (await svc.validate(sid)).data == {"cart": [1]}
    assert (await svc.update_data(sid, {"cart": []})).data == {"cart": []}
    assert (await svc.validate(sid)).data == {"cart": []}


@pytest.mark.parametrize(
    "data",
    [
        {"x": object()},
        {"x": float("nan")},
        {1: "int key"},
        {"big": "x" * (64 * 1024)},
        ["not", "a", "mapping"],
    ],
)
async def test_bad_data_is_refused(svc: DefaultSessionService, data: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await svc.create("user-1", data=data)
    assert info.value.code == "session.invalid_data"


@pytest.mark.parametrize("user", ["", "x" * 257, None, 5])
async def test_bad_user_is_refused(svc: DefaultSessionService, user: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await svc.create(user)
    assert info.value.code == "session.invalid_user"


@pytest.mark.parametrize("raw", ["", "short", "a" * 200, "ä" * 43, None, 12, "x" * 42 + "!", "../" * 15])
async def test_malformed_ids_never_reach_the_store(svc: DefaultSessionService, raw: Any) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate(raw)
    assert info.value.code == "session.invalid"
    assert await svc.get(raw) is None
    assert await svc.destroy(raw) is False


async def test_unknown_id(svc: DefaultSessionService) -> None:
    assert await svc.get(secrets.token_urlsafe(32)) is None


async def test_idle_expiry_slides_and_then_expires(svc: DefaultSessionService, clock: FakeClock) -> None:
    _, sid = await svc.create("user-1")
    clock.advance(minutes=20)
    assert (await svc.validate(sid)).expires_at == clock.now() + timedelta(minutes=30)
    clock.advance(minutes=30)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate(sid)
    assert info.value.code == "session.expired"
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate(sid)  # deleted on sight
    assert info.value.code == "session.invalid"


async def test_rotation_keeps_absolute_expiry(svc: DefaultSessionService, clock: FakeClock) -> None:
    first, sid = await svc.create("user-1", data={"a": 1})
    for _ in range(4):
        clock.advance(minutes=25)
        await svc.validate(sid)
    rotated, new_sid = await svc.rotate(sid)
    assert new_sid != sid
    assert rotated.absolute_expires_at == first.absolute_expires_at
    assert rotated.data == {"a": 1}
    assert await svc.get(sid) is None
    with pytest.raises(UnauthenticatedError):
        await svc.rotate(sid)


# -- CSRF --------------------------------------------------------------------------------------


async def test_csrf_token_bound_to_session(svc: DefaultSessionService, store: MemorySessionStore) -> None:
    _, sid = await svc.create("user-1")
    _, other = await svc.create("user-2")
    token = svc.csrf_token(sid)
    svc.verify_csrf(sid, token)
    assert token == svc.csrf_token(sid)  # stable for the session
    assert token != svc.csrf_token(other)
    for bad in (None, "", svc.csrf_token(other), token[:-1], token + "A", "x" * 500, "ä" * 43):
        with pytest.raises(ForbiddenError) as info:
            svc.verify_csrf(sid, bad)
        assert info.value.code == "session.csrf_invalid"
    with pytest.raises(ForbiddenError):
        svc.verify_csrf("garbage", token)
    # A different server key (another deployment) yields different tokens.
    other_svc = DefaultSessionService(store, csrf_key=secrets.token_bytes(32))
    with pytest.raises(ForbiddenError):
        other_svc.verify_csrf(sid, token)


async def test_csrf_token_changes_on_rotation(svc: DefaultSessionService) -> None:
    _, sid = await svc.create("user-1")
    token = svc.csrf_token(sid)
    _, new_sid = await svc.rotate(sid)
    with pytest.raises(ForbiddenError):
        svc.verify_csrf(new_sid, token)
    svc.verify_csrf(new_sid, svc.csrf_token(new_sid))


def test_configuration_errors(store: MemorySessionStore) -> None:
    with pytest.raises(ValidationError) as info:
        DefaultSessionService(store, csrf_key=b"short")
    assert info.value.code == "session.weak_key"
    with pytest.raises(ValidationError):
        DefaultSessionService(store, idle_timeout=timedelta(hours=13))
    with pytest.raises(ValidationError):
        DefaultSessionService(store, idle_timeout=timedelta(0))
    assert KEY.hex() not in repr(DefaultSessionService(store, csrf_key=KEY))


# -- OAuth state -------------------------------------------------------------------------------


async def test_oauth_state_values(svc: DefaultSessionService, clock: FakeClock) -> None:
    state = await svc.create_oauth_state({"code_verifier": "v" * 43})
    assert state.state != state.nonce
    assert len(state.state) == 43
    assert state.expires_at == clock.now() + timedelta(minutes=10)
    assert state.state not in repr(state)
    assert state.nonce not in repr(state)
    data = await svc.consume_oauth_state(state.state)
    assert "v" * 43 not in repr(data)


@pytest.mark.parametrize(
    "payload",
    [
        {"k": 1},
        {1: "v"},
        {"k" * 65: "v"},
        {"k": "v" * 4097},
        {str(i): "v" for i in range(33)},
        {"_maaskit_nonce": "x"},
    ],
)
async def test_bad_state_payload(svc: DefaultSessionService, payload: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await svc.create_oauth_state(payload)
    assert info.value.code == "session.invalid_state_payload"


async def test_state_ttl_and_malformed_state(svc: DefaultSessionService, clock: FakeClock) -> None:
    state = await svc.create_oauth_state(ttl=timedelta(seconds=30))
    clock.advance(seconds=31)
    with pytest.raises(UnauthenticatedError):
        await svc.consume_oauth_state(state.state)
    with pytest.raises(UnauthenticatedError):
        await svc.consume_oauth_state("not-a-state")
    with pytest.raises(ValidationError):
        await svc.create_oauth_state(ttl=timedelta(0))


async def test_cleanup(svc: DefaultSessionService, clock: FakeClock) -> None:
    await svc.create("user-1")
    await svc.create_oauth_state()
    assert await svc.cleanup_expired() == 0
    clock.advance(minutes=31)
    assert await svc.cleanup_expired() == 2
    await svc.ping()


# -- failing closed ----------------------------------------------------------------------------


class BrokenStore(MemorySessionStore):
    """A store whose reads fail like an outage."""

    async def get(self, digest: str) -> SessionRecord | None:
        raise UnavailableError("session.store_unavailable")

    async def take_state(self, digest: str, now: datetime) -> OAuthStateRecord | None:
        raise UnavailableError("session.store_unavailable")

    async def update_data(self, digest: str, data: Mapping[str, Any]) -> bool:
        raise UnavailableError("session.store_unavailable")


async def test_an_outage_is_never_a_valid_session(clock: FakeClock) -> None:
    svc = DefaultSessionService(BrokenStore(), clock=clock)
    _, sid = await svc.create("user-1")
    with pytest.raises(UnavailableError):
        await svc.validate(sid)
    with pytest.raises(UnavailableError):
        await svc.get(sid)  # not "None", which a caller might treat as "anonymous but fine"
    with pytest.raises(UnavailableError):
        await svc.consume_oauth_state(secrets.token_urlsafe(32))


async def test_unreachable_redis_fails_closed(clock: FakeClock) -> None:
    client = create_redis("redis://127.0.0.1:1/0", retries=0, socket_connect_timeout=0.5)
    svc = DefaultSessionService(RedisSessionStore(client, prefix="t:closed:"), clock=clock)
    sid = secrets.token_urlsafe(32)
    with pytest.raises(UnavailableError) as info:
        await svc.validate(sid)
    assert info.value.code == "session.store_unavailable"
    with pytest.raises(UnavailableError):
        await svc.get(sid)
    with pytest.raises(UnavailableError):
        await svc.create("user-1")
    with pytest.raises(UnavailableError):
        await svc.consume_oauth_state(secrets.token_urlsafe(32))
    with pytest.raises(UnavailableError):
        await svc.ping()
    await client.aclose()


async def test_unreachable_database_fails_closed(clock: FakeClock) -> None:
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none", pool_timeout=1)
    svc = DefaultSessionService(SqlSessionStore(db), clock=clock)
    with pytest.raises(UnavailableError):
        await svc.validate(secrets.token_urlsafe(32))
    await db.aclose()


async def test_sql_store_with_dropped_table_does_not_validate(clock: FakeClock) -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    await db.migrate()
    svc = DefaultSessionService(SqlSessionStore(db), clock=clock)
    _, sid = await svc.create("user-1")
    async with db.transaction() as session:
        await session.execute(sa.text("DROP TABLE maaskit_sessions"))
    with pytest.raises(UnavailableError):
        await svc.validate(sid)
    await db.aclose()


def test_session_digest_is_sha256() -> None:
    assert session_digest("abc") == hashlib.sha256(b"abc").hexdigest()
