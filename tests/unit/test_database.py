import pytest
import sqlalchemy as sa

from maaskit.errors import UnavailableError, ValidationError
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import VERSION_TABLE, Database


async def test_upgrade_and_downgrade(sql_db: Database) -> None:
    assert await sql_db.current_revisions() == Database.head_revisions()
    async with sql_db.connect() as conn:
        tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert set(metadata.tables) <= tables
    assert VERSION_TABLE in tables
    assert "alembic_version" not in tables  # the application's own table stays untouched
    await sql_db.downgrade("base")
    assert await sql_db.current_revisions() == ()
    async with sql_db.connect() as conn:
        left = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert not (set(metadata.tables) & left)
    await sql_db.migrate()  # and back up again: migrations are repeatable
    assert await sql_db.current_revisions() == Database.head_revisions()


async def test_schema_matches_the_table_definitions(sql_db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def diff(conn: sa.Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        return [d for d in compare_metadata(ctx, metadata) if not _ignorable(d)]

    async with sql_db.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


def _ignorable(diff: object) -> bool:
    # the version table is Alembic's own
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == VERSION_TABLE


async def test_ping_of_an_unreachable_database_is_unavailable() -> None:
    db = Database("postgresql+asyncpg://nobody:secret-pw@127.0.0.1:1/none", pool_timeout=1)
    with pytest.raises(UnavailableError) as info:
        await db.ping()
    assert "secret-pw" not in str(info.value)
    assert "secret-pw" not in repr(db)
    await db.aclose()


def test_bad_urls_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        Database("mysql://localhost/x")
    with pytest.raises(ValidationError):
        Database("not a url at all")


async def test_file_database_survives_reopening(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    db = Database(url)
    await db.migrate()
    await db.aclose()
    again = Database(url)
    assert await again.current_revisions() == Database.head_revisions()
    await again.aclose()
