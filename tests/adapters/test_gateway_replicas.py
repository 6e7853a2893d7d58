"""Two gateway replicas sharing one database and one Redis (issue 3: "a revoked key still in another
replica's cache").

Replica B validates a key (so it sits in B's in-process cache), then the key is revoked, disabled
or rotated with grace 0 through replica A's admin API. B must refuse it within the documented
bound (about 1 s through Redis pub/sub; polled here for at most 5 s, never timed). A control
without the bus shows that B would otherwise keep serving its cached key.

The database is a SQLite file shared by both replicas, or the real PostgreSQL; Redis carries the
invalidation messages (on a channel unique to the test) and the rate limits and budgets (under
the test's ``redis_prefix``): wiring has no setting for either name, so both are passed to
``create_app`` as overrides.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest

from maaskit.services.api_keys import DefaultApiKeyService
from maaskit.storage.ports.api_keys import KeyInvalidationBus
from maaskit.storage.ports.limits import LimitsStore
from maaskit.storage.redis.api_keys import RedisKeyInvalidationBus
from maaskit.storage.redis.client import create_redis
from maaskit.storage.redis.limits import RedisLimitsStore
from maaskit.storage.sql.database import Database

if TYPE_CHECKING:  # fixtures' types (conftest is not importable at run time)
    from conftest import Gateway, GatewayFactory

pytestmark = pytest.mark.redis

MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(params=["sqlite-file", "postgres"])
async def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The database URL both replicas use (PostgreSQL is emptied again afterwards)."""
    if request.param == "sqlite-file":
        yield f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    yield url
    db = Database(url)
    try:
        await db.downgrade("base")
    finally:
        await db.aclose()


@asynccontextmanager
async def _replicas(
    factory: GatewayFactory, database_url: str, redis_url: str | None, redis_prefix: str, **changes: Any
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Replicas A and B: same database, pepper and admin token; with Redis, one bus and limits."""
    shared = {
        "database_url": database_url,
        "key_pepper": secrets.token_urlsafe(48),
        "admin_token": secrets.token_urlsafe(24),
        "key_cache_ttl": 3600.0,  # only an invalidation can make B forget a key during the test
        **changes,
    }
    async with AsyncExitStack() as stack:
        limits: RedisLimitsStore | None = None
        if redis_url is not None:
            limits_client = create_redis(redis_url)
            stack.push_async_callback(limits_client.aclose)
            limits = RedisLimitsStore(limits_client, prefix=redis_prefix)
            await limits.load_scripts()
            shared.update(redis_url=redis_url, limits_backend="redis", cache_backend="memory")
        replicas = []
        for _name in ("a", "b"):
            overrides: dict[type[Any], object] = {}
            if redis_url is not None:
                assert limits is not None
                bus = RedisKeyInvalidationBus(
                    create_redis(redis_url), channel=f"{redis_prefix}api_keys:invalidate", close_client=True
                )
                stack.push_async_callback(bus.stop)  # overrides are not closed by the registry
                overrides = {KeyInvalidationBus: bus, LimitsStore: limits}
            replicas.append(await stack.enter_async_context(factory(overrides=overrides, **shared)))
        yield replicas[0], replicas[1]


async def _b_refuses(b: Gateway, secret: str, code: str) -> bool:
    """Poll B (bounded) until it refuses *secret* with *code*."""
    client = b.openai(secret)

    async def refused() -> bool:
        try:
            await client.models.list()
        except openai.AuthenticationError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            return bool(body.get("code") == code)
        return False

    return await b.eventually(refused)


async def _warm(b: Gateway, secret: str) -> None:
    """A call through B, so that B has the key in its validation cache."""
    done = await b.openai(secret).chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=8)
    assert done.choices[0].message.content == b.fake.reply
    keys = b.app.api_keys
    assert isinstance(keys, DefaultApiKeyService)
    assert keys.cached_keys >= 1


async def test_revoked_key_in_another_replicas_cache_is_refused(
    gateway_factory: GatewayFactory, shared_database: str, redis_url: str, redis_prefix: str
) -> None:
    async with _replicas(gateway_factory, shared_database, redis_url, redis_prefix) as (a, b):
        key = await a.create_key(budget="0.01", rpm_limit=100)
        await _warm(b, key["secret"])

        assert (await a.admin.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200

        assert await _b_refuses(b, key["secret"], "api_key.revoked")
        with pytest.raises(openai.AuthenticationError):
            await b.openai(key["secret"]).chat.completions.create(model="fake-model", messages=MESSAGES)
        # the refused calls wrote nothing: one usage row, from the warm-up call (B's buffer is
        # flushed into the shared database, A reads it)
        await b.app.usage.flush()
        rows = await a.usage(key_id=key["id"])
        assert [r["requests"] for r in rows] == [1]


async def test_disabled_key_in_another_replicas_cache_is_refused_and_comes_back(
    gateway_factory: GatewayFactory, shared_database: str, redis_url: str, redis_prefix: str
) -> None:
    async with _replicas(gateway_factory, shared_database, redis_url, redis_prefix) as (a, b):
        key = await a.create_key()
        await _warm(b, key["secret"])

        disabled = await a.admin.post(f"/admin/keys/{key['id']}/disable")
        assert disabled.json()["enabled"] is False
        assert await _b_refuses(b, key["secret"], "api_key.disabled")

        assert (await a.admin.post(f"/admin/keys/{key['id']}/enable")).json()["enabled"] is True
        client = b.openai(key["secret"])

        async def accepted() -> bool:
            try:
                await client.models.list()
            except openai.AuthenticationError:
                return False
            return True

        assert await b.eventually(accepted)


async def test_rotation_with_grace_zero_is_seen_by_the_other_replica(
    gateway_factory: GatewayFactory, shared_database: str, redis_url: str, redis_prefix: str
) -> None:
    async with _replicas(gateway_factory, shared_database, redis_url, redis_prefix) as (a, b):
        key = await a.create_key(budget="0.01")
        await _warm(b, key["secret"])

        rotated = await a.admin.post(f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 0})
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert rotated.json()["id"] == key["id"]  # a stable key id
        assert new_secret != key["secret"]

        assert await _b_refuses(b, key["secret"], "api_key.unknown")
        await _warm(b, new_secret)
        # usage belongs to the key id: both secrets' calls are in one report row
        await b.app.usage.flush()
        rows = await a.usage(key_id=key["id"])
        assert [r["requests"] for r in rows] == [2]


async def test_rate_limit_is_shared_by_the_replicas(
    gateway_factory: GatewayFactory, shared_database: str, redis_url: str, redis_prefix: str
) -> None:
    async with _replicas(gateway_factory, shared_database, redis_url, redis_prefix) as (a, b):
        key = await a.create_key(rpm_limit=3)
        for gateway in (a, b, a):
            await gateway.openai(key["secret"]).chat.completions.create(
                model="fake-model", messages=MESSAGES, max_tokens=8
            )
        with pytest.raises(openai.RateLimitError) as info:  # the 4th call in the minute, on B
            await b.openai(key["secret"]).chat.completions.create(model="fake-model", messages=MESSAGES)
        assert info.value.response.headers["retry-after"].isdigit()


async def test_without_a_bus_the_other_replica_serves_its_cache(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    """The control: with no Redis, B keeps the revoked key until its cache entry expires."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-bus.db'}"
    async with _replicas(gateway_factory, url, None, "unused:") as (a, b):
        key = await a.create_key()
        await _warm(b, key["secret"])
        assert (await a.admin.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200
        with pytest.raises(openai.AuthenticationError):  # A itself refuses at once
            await a.openai(key["secret"]).models.list()
        listed = await b.openai(key["secret"]).models.list()  # B still has it cached
        assert listed.data
