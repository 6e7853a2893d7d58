"""The TokenStore backends (memory, SQLite, PostgreSQL, Redis) behave the same, including races."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from maaskit.errors import UnauthenticatedError, UnavailableError
from maaskit.services.tokens import DefaultTokenService, SigningKey
from maaskit.storage.memory.tokens import MemoryTokenStore
from maaskit.storage.ports.tokens import RefreshFamily, RotateOutcome, TokenStore
from maaskit.storage.redis.client import create_redis
from maaskit.storage.redis.tokens import RedisTokenStore
from maaskit.storage.sql import Database
from maaskit.storage.sql.tokens import SqlTokenStore
from maaskit.testing.clock import FakeClock


@pytest.fixture
async def store(store_backend: tuple[str, str, str]) -> AsyncIterator[TokenStore]:
    kind, url, prefix = store_backend
    if kind == "memory":
        yield MemoryTokenStore()
    elif kind in ("sqlite", "postgres"):
        db = Database(url)
        await db.migrate()
        yield SqlTokenStore(db)
        if kind == "postgres":
            await db.downgrade("base")
        await db.aclose()
    else:
        client = create_redis(url)
        yield RedisTokenStore(client, prefix=prefix)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def family(clock: FakeClock, fid: str = "fam_1", subject: str = "u1", jti: str = "j0") -> RefreshFamily:
    return RefreshFamily(
        family_id=fid,
        subject=subject,
        current_jti=jti,
        created_at=clock.now(),
        expires_at=clock.now() + timedelta(days=1),
    )


async def test_deny_list(store: TokenStore, clock: FakeClock) -> None:
    now = clock.now()
    assert not await store.is_denied("a", now)
    await store.deny("a", now + timedelta(minutes=5), now)
    await store.deny("a", now + timedelta(minutes=1), now)  # an earlier expiry never shortens it
    assert await store.is_denied("a", now)
    assert await store.is_denied("a", now + timedelta(minutes=4))
    assert not await store.is_denied("a", now + timedelta(minutes=5))
    assert not await store.is_denied("b", now)
    assert await store.cleanup_expired(now) == 0
    assert await store.cleanup_expired(now + timedelta(minutes=6)) == 1
    assert not await store.is_denied("a", now)


async def test_family_rotation_outcomes(store: TokenStore, clock: FakeClock) -> None:
    now = clock.now()
    exp = now + timedelta(days=2)
    await store.create_family(family(clock))
    got = await store.get_family("fam_1")
    assert got is not None
    assert got.subject == "u1"
    assert got.current_jti == "j0"
    assert got.revoked_at is None
    assert await store.rotate_family("fam_1", "j0", "j1", exp, now) is RotateOutcome.ROTATED
    got = await store.get_family("fam_1")
    assert got is not None
    assert got.current_jti == "j1"
    assert got.expires_at == exp
    assert await store.rotate_family("fam_1", "j0", "j2", exp, now) is RotateOutcome.REUSED
    assert await store.rotate_family("fam_1", "j1", "j2", exp, now) is RotateOutcome.REVOKED
    revoked = await store.get_family("fam_1")
    assert revoked is not None
    assert revoked.revoked_at == now
    assert await store.rotate_family("nope", "j0", "j1", exp, now) is RotateOutcome.UNKNOWN
    assert await store.get_family("nope") is None


async def test_expired_family_is_unknown(store: TokenStore, clock: FakeClock) -> None:
    await store.create_family(family(clock))
    later = clock.now() + timedelta(days=1)
    assert (
        await store.rotate_family("fam_1", "j0", "j1", later + timedelta(days=1), later)
        is RotateOutcome.UNKNOWN
    )
    assert await store.set_current("fam_1", "j1", later + timedelta(days=1), later) is False
    assert await store.cleanup_expired(later) == 1
    assert await store.get_family("fam_1") is None


async def test_set_current_and_revocation(store: TokenStore, clock: FakeClock) -> None:
    now = clock.now()
    await store.create_family(family(clock, "fam_a", "u1"))
    await store.create_family(family(clock, "fam_b", "u1"))
    await store.create_family(family(clock, "fam_c", "u2"))
    assert await store.set_current("fam_a", "jx", now + timedelta(days=3), now) is True
    got = await store.get_family("fam_a")
    assert got is not None
    assert got.current_jti == "jx"
    assert got.expires_at == now + timedelta(days=3)
    assert await store.revoke_family("fam_a", now) is True
    assert await store.revoke_family("fam_a", now) is False
    assert await store.set_current("fam_a", "jy", now + timedelta(days=3), now) is False
    assert await store.revoke_subject("u1", now) == 1  # fam_b only: fam_a was already revoked
    assert await store.revoke_subject("u1", now) == 0
    assert (
        await store.rotate_family("fam_c", "j0", "j1", now + timedelta(days=1), now) is RotateOutcome.ROTATED
    )
    assert await store.revoke_family("missing", now) is False
    await store.ping()


async def test_simultaneous_rotation_exactly_one_wins(store: TokenStore, clock: FakeClock) -> None:
    now = clock.now()
    await store.create_family(family(clock))
    outcomes = await asyncio.gather(
        *(store.rotate_family("fam_1", "j0", f"new-{i}", now + timedelta(days=1), now) for i in range(8))
    )
    assert outcomes.count(RotateOutcome.ROTATED) == 1
    assert all(
        o in (RotateOutcome.REUSED, RotateOutcome.REVOKED) for o in outcomes if o is not RotateOutcome.ROTATED
    )


async def test_two_simultaneous_refreshes_exactly_one_succeeds(store: TokenStore, clock: FakeClock) -> None:
    key = SigningKey.hs256(secrets.token_bytes(32), kid="k")
    svc = DefaultTokenService([key], store, issuer="iss", audience="aud", clock=clock)
    pair = await svc.issue_pair("user-1")
    results = await asyncio.gather(
        svc.refresh(pair.refresh.token), svc.refresh(pair.refresh.token), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], UnauthenticatedError)
    assert losers[0].code in ("tokens.refresh_reused", "tokens.revoked")


async def test_redis_store_fails_closed_when_unreachable(clock: FakeClock) -> None:
    client = create_redis("redis://127.0.0.1:1/0", retries=0, socket_connect_timeout=0.5)
    store = RedisTokenStore(client, prefix="t:closed:")
    key = SigningKey.hs256(secrets.token_bytes(32), kid="k")
    svc = DefaultTokenService([key], store, issuer="iss", audience="aud", clock=clock)
    token = svc.issue_access("user-1").token
    with pytest.raises(UnavailableError):
        await svc.validate_access(token)
    with pytest.raises(UnavailableError):
        await svc.ping()
    await client.aclose()
