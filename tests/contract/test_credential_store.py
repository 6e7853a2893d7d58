"""CredentialStore contract: memory, SQLite and PostgreSQL behave the same; migration 0009 matches."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta

import attrs
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import maaskit.storage.sql.tables  # noqa: F401  (registers every table)
from maaskit.services.credentials import DefaultCredentialPool
from maaskit.services.secrets import DefaultSecretService, MasterKey
from maaskit.storage.memory.credentials import MemoryCredentialStore
from maaskit.storage.ports.credentials import CredentialRecord, CredentialStore, CredentialUsageDelta
from maaskit.storage.sql import Database
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.credentials import SqlCredentialStore
from maaskit.storage.sql.secrets import SqlSecretStore
from maaskit.testing.clock import FakeClock

TABLES = ("maaskit_credentials", "maaskit_credential_usage", "maaskit_credential_failures")
SECRET = "sk-raw-secret-must-not-be-in-sql-42"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "postgres":
        return ("postgres", str(request.getfixturevalue("postgres_url")))
    return (request.param, "sqlite+aiosqlite:///:memory:")


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[CredentialStore]:
    kind, url = backend
    if kind == "memory":
        yield MemoryCredentialStore()
        return
    db = Database(url)
    await db.migrate()
    try:
        yield SqlCredentialStore(db)
    finally:
        if kind == "postgres":
            await db.downgrade("base")
        await db.aclose()


def _record(
    clock: FakeClock, i: int, upstream: str = "u", models: tuple[str, ...] | None = None
) -> CredentialRecord:
    now = clock.now() + timedelta(seconds=i)
    return CredentialRecord(
        id=f"cred_{i:03d}", upstream=upstream, name=f"n{i}", kind="api_key", header="Authorization",
        header_format="Bearer {secret}", weight=1 + i, models=models, secret_ref=f"credential/cred_{i:03d}",
        enabled=True, disabled_reason=None, created_at=now, updated_at=now,
    )  # fmt: skip


async def test_insert_get_list_update_delete(store: CredentialStore, clock: FakeClock) -> None:
    assert isinstance(store, CredentialStore)
    a, b, c = _record(clock, 1), _record(clock, 2, "v", ("gpt-4o", "o1")), _record(clock, 3)
    for r in (c, a, b):
        await store.insert(r)
    assert await store.get(a.id) == a
    assert await store.get(b.id) == b
    assert await store.get("cred_missing") is None
    assert [r.id for r in await store.list()] == [a.id, b.id, c.id]
    assert [r.id for r in await store.list(upstream="v")] == [b.id]
    changed = attrs.evolve(
        a, name="x", weight=9, models=("m",), enabled=False, disabled_reason="manual",
        updated_at=a.updated_at + timedelta(seconds=5), upstream="ignored", secret_ref="ignored",
    )  # fmt: skip
    assert await store.update(changed)
    got = await store.get(a.id)
    assert got is not None
    assert (got.name, got.weight, got.models, got.enabled, got.disabled_reason) == (
        "x",
        9,
        ("m",),
        False,
        "manual",
    )
    assert (got.upstream, got.secret_ref) == (a.upstream, a.secret_ref)
    assert not await store.update(_record(clock, 99))
    assert await store.delete(a.id)
    assert not await store.delete(a.id)
    assert await store.get(a.id) is None


async def test_usage_adds_up(store: CredentialStore, clock: FakeClock) -> None:
    a = _record(clock, 1)
    await store.insert(a)
    t1 = clock.now()
    await store.add_usage(
        [
            CredentialUsageDelta(a.id, requests=3, successes=2, failures={401: 1}, tokens=5_000_000_000,
                                 last_used_at=t1, cooldown_until=t1 + timedelta(seconds=30), set_cooldown=True),
            CredentialUsageDelta("cred_unknown", requests=1),
        ]
    )  # fmt: skip
    t2 = t1 + timedelta(seconds=10)
    await store.add_usage(
        [CredentialUsageDelta(a.id, requests=2, failures={401: 2, 0: 1}, last_failure_at=t2)],
        [attrs.evolve(a, enabled=False, disabled_reason="failures", updated_at=t2)],
    )
    usage = await store.usage()
    assert set(usage) == {a.id}
    u = usage[a.id]
    assert (u.requests, u.successes, u.tokens, dict(u.failures)) == (5, 2, 5_000_000_000, {401: 3, 0: 1})
    assert (u.last_used_at, u.last_failure_at) == (t1, t2)
    assert u.cooldown_until == t1 + timedelta(seconds=30)  # kept: no set_cooldown
    await store.add_usage([CredentialUsageDelta(a.id, set_cooldown=True)])
    assert (await store.usage())[a.id].cooldown_until is None
    got = await store.get(a.id)
    assert got is not None
    assert got.enabled is False
    assert got.disabled_reason == "failures"
    assert await store.delete(a.id)
    assert await store.usage() == {}


async def test_pool_on_sql_keeps_secrets_encrypted(sql_db: Database, clock: FakeClock) -> None:
    secrets = DefaultSecretService(
        SqlSecretStore(sql_db), MasterKey(os.urandom(32), key_id="k1"), clock=clock
    )
    pool = DefaultCredentialPool(SqlCredentialStore(sql_db), secrets=secrets, clock=clock)
    await pool.load()
    cred = await pool.add("u", SECRET, kind="cookie", header_format="session={secret}")
    lease = pool.acquire("m")
    lease.release(429, retry_after=40)
    await pool.flush()
    # dump every row of the pool's tables and of the secrets table: the raw secret is nowhere
    async with sql_db.connect() as conn:
        dumped = []
        for table in (*TABLES, "maaskit_secrets"):
            rows = (await conn.execute(sa.text(f"SELECT * FROM {table}"))).all()
            dumped.append(repr(rows))
    text = "\n".join(dumped)
    assert cred.id in text
    assert "credential/" in text
    assert SECRET not in text
    assert SECRET.encode().hex() not in text
    # a restarted pool reads it back through the secret service, cooldown included
    again = DefaultCredentialPool(SqlCredentialStore(sql_db), secrets=secrets, clock=clock)
    await again.load()
    (stats,) = again.stats()
    assert stats.requests == 1
    assert stats.failures == {429: 1}
    assert not stats.available
    clock.advance(seconds=40)
    lease = again.acquire("m")
    assert lease.header_value == f"session={SECRET}"
    lease.release(200)


async def test_migration_matches_tables_and_downgrades(sql_db: Database) -> None:
    def diff(conn: sa.Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if any(t in repr(d) for t in TABLES)]

    async with sql_db.connect() as conn:
        assert await conn.run_sync(diff) == []
    await sql_db.downgrade("0008_downloads")
    async with sql_db.connect() as conn:
        tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    assert not tables & set(TABLES)
    assert "maaskit_download_requests" in tables
    await sql_db.migrate()
    assert await sql_db.current_revisions() == Database.head_revisions()
