"""ApiKeyService over SQL (SQLite + PostgreSQL) and the 0002_api_keys migration."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maaskit.errors import UnauthenticatedError
from maaskit.services.api_keys import DefaultApiKeyService
from maaskit.storage.sql import Database
from maaskit.storage.sql.api_keys import SqlApiKeyStore
from maaskit.storage.sql.base import metadata
from maaskit.testing.clock import FakeClock

TABLE = "maaskit_api_keys"


@pytest.fixture(autouse=True)
def _postgres_url_outside_the_event_loop(request: pytest.FixtureRequest) -> None:
    # conftest's session-scoped `postgres_url` calls asyncio.run() and fails when first requested
    # from inside the async `sql_db` fixture; create it here, outside the loop.
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("sql_db") == "postgres":
        request.getfixturevalue("postgres_url")


async def test_migration_matches_the_table_definition(sql_db: Database) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if TABLE in repr(d)]

    async with sql_db.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_migration_downgrades_and_upgrades_again(sql_db: Database) -> None:
    def tables(conn: sa.Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    async with sql_db.connect() as conn:
        assert TABLE in await conn.run_sync(tables)
    await sql_db.downgrade("0001_foundation")
    async with sql_db.connect() as conn:
        assert TABLE not in await conn.run_sync(tables)
    await sql_db.migrate()
    async with sql_db.connect() as conn:
        assert TABLE in await conn.run_sync(tables)


async def test_service_round_trip_over_sql(sql_db: Database, clock: FakeClock) -> None:
    keys = DefaultApiKeyService(SqlApiKeyStore(sql_db), clock, pepper=b"s" * 32)
    created = await keys.create("u", name="k", allowed_models=["m1", "m2"], budget_micros=3)
    assert await keys.validate(created.secret) == created.key
    rotation = await keys.rotate(created.key.id, grace_seconds=60, idempotency_key="retry-0123456789abcdef")
    replay = await keys.rotate(created.key.id, grace_seconds=60, idempotency_key="retry-0123456789abcdef")
    assert replay.secret == rotation.secret
    assert replay.replayed
    assert (await keys.validate(created.secret)).id == created.key.id
    assert (await keys.validate(rotation.secret)).id == created.key.id
    clock.advance(60)
    with pytest.raises(UnauthenticatedError) as info:
        await keys.validate(created.secret)
    assert info.value.code == "api_key.rotated"
    await keys.revoke(created.key.id)
    with pytest.raises(UnauthenticatedError) as info:
        await keys.validate(rotation.secret)
    assert info.value.code == "api_key.revoked"
    # Only digests are stored.
    async with sql_db.connect() as conn:
        rows = (await conn.execute(sa.text(f"SELECT * FROM {TABLE}"))).all()
    assert created.secret not in repr(rows)
    assert rotation.secret not in repr(rows)
