"""The async SQL engine: SQLite (``sqlite+aiosqlite``) by default, PostgreSQL (``postgresql+asyncpg``).

Example::

    db = Database("sqlite+aiosqlite:///./maaskit.db")
    await db.migrate()                 # Alembic, migrations shipped in the package
    async with db.session() as session:
        ...
    await db.aclose()
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from maaskit.errors import UnavailableError, ValidationError

__all__ = ["VERSION_TABLE", "Database"]

#: maaskit's own Alembic version table, separate from the application's ``alembic_version``.
VERSION_TABLE = "maaskit_alembic_version"

log = structlog.get_logger(__name__)


def _alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("maaskit.storage.sql") / "migrations"))
    cfg.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class Database:
    """An async SQLAlchemy engine with sessions, Alembic migrations and a health ping.

    Args:
        url: ``sqlite+aiosqlite:///path.db``, ``sqlite+aiosqlite:///:memory:`` or
            ``postgresql+asyncpg://user@host/db``.
        pool_size: connections kept open (PostgreSQL).
        max_overflow: extra connections allowed under load (PostgreSQL).
        pool_timeout: seconds to wait for a free connection (PostgreSQL).
        pool_recycle: seconds after which a connection is replaced (PostgreSQL).
        echo: log every SQL statement (development only).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        pool_recycle: float = 1800.0,
        echo: bool = False,
    ) -> None:
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError:
            raise ValidationError(
                "config.invalid", setting="database_url", reason="not a database URL"
            ) from None
        self.dialect = parsed.get_backend_name()
        self._temporary: Path | None = None
        engine_url = parsed
        # hide_parameters: bound values (key digests, password hashes, ciphertexts) never reach the
        # echo log nor the text of SQLAlchemy's exceptions
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        if self.dialect == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if memory:
                # ``:memory:`` would be one connection shared by every task (StaticPool), whose
                # transactions then interleave: one task's commit can commit another's half-done
                # work. A private temporary file gives each connection real isolation and is
                # deleted by ``aclose()``: the same lifetime as an in-memory database.
                fd, path = tempfile.mkstemp(prefix="maaskit-memory-", suffix=".db")
                os.close(fd)
                self._temporary = Path(path)
                engine_url = parsed.set(database=path)
        elif self.dialect == "postgresql":
            kwargs.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                pool_recycle=pool_recycle,
                pool_pre_ping=True,
            )
        else:
            raise ValidationError("config.invalid", setting="database_url", reason="unsupported database")
        self._url = parsed
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._migrate_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return unquote(self._url.render_as_string(hide_password=True))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session; commit it yourself. Rolled back on error, closed on exit."""
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self._sessions() as session, session.begin():
            yield session

    async def migrate(self, revision: str = "heads") -> None:
        """Upgrade the schema to *revision* (default: the newest) with the shipped migrations."""
        await self._run_alembic(lambda cfg: command.upgrade(cfg, revision))

    async def downgrade(self, revision: str = "base") -> None:
        """Downgrade the schema to *revision* (default: drop every maaskit table)."""
        await self._run_alembic(lambda cfg: command.downgrade(cfg, revision))

    async def current_revisions(self) -> tuple[str, ...]:
        """The migration revisions the database is at (empty before the first migration)."""

        def read(conn: sa.Connection) -> tuple[str, ...]:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return tuple(sorted(ctx.get_current_heads()))

        async with self.engine.connect() as conn:
            return await conn.run_sync(read)

    @staticmethod
    def head_revisions() -> tuple[str, ...]:
        """The newest revisions shipped with this maaskit version."""
        return tuple(sorted(ScriptDirectory.from_config(_alembic_config()).get_heads()))

    async def _run_alembic(self, action: Any) -> None:
        def run(conn: sa.Connection) -> None:
            action(_alembic_config(conn))

        async with self._migrate_lock:
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(run)
            except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                raise UnavailableError("database.unavailable") from exc

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises ``database.unavailable`` if the database cannot be reached."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DBAPIError) as exc:
            raise UnavailableError("database.unavailable") from exc

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A raw async connection (Core queries, bulk inserts)."""
        async with self.engine.connect() as conn:
            yield conn

    async def aclose(self) -> None:
        """Dispose of the connection pool (and delete the file behind a ``:memory:`` database)."""
        await self.engine.dispose()
        self._remove_temporary()

    def _remove_temporary(self) -> None:
        if self._temporary is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self._temporary) + suffix).unlink(missing_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
