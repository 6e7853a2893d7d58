"""Migration 0005 (tokens, sessions, secrets) matches the table definitions and downgrades cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import maaskit.storage.sql.tables  # noqa: F401  (registers every table)
from maaskit.storage.sql import Database
from maaskit.storage.sql.base import metadata

REVISION = "0005_tokens_sessions_secrets"
TABLES = {
    "maaskit_token_denylist",
    "maaskit_refresh_families",
    "maaskit_sessions",
    "maaskit_oauth_states",
    "maaskit_secrets",
}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return "sqlite+aiosqlite:///:memory:"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.downgrade("base")
    await database.aclose()


async def _tables(db: Database) -> set[str]:
    async with db.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def test_upgrade_matches_models_and_downgrade_removes_tables(db: Database) -> None:
    await db.migrate()
    assert await db.current_revisions() == Database.head_revisions()
    assert await _tables(db) >= TABLES

    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(ctx, metadata) if _mine(d)]

    async with db.connect() as conn:
        assert await conn.run_sync(diff) == []

    await db.downgrade(f"{REVISION}-1")
    assert await db.current_revisions() == ("0004_usage",)
    remaining = await _tables(db)
    assert not (TABLES & remaining)
    assert "maaskit_setting_overrides" in remaining
    await db.migrate()  # and up again
    assert await _tables(db) >= TABLES


def _mine(entry: Any) -> bool:
    items = entry if isinstance(entry, list) else [entry]
    for item in items:
        for part in item if isinstance(item, tuple) else (item,):
            name = getattr(part, "name", None)
            table = getattr(part, "table", None)
            if name in TABLES or getattr(table, "name", None) in TABLES:
                return True
            if isinstance(part, str) and part in TABLES:
                return True
    return False
