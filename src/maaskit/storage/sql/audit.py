"""SQL :class:`~maaskit.storage.ports.audit.AuditStore` (SQLite, PostgreSQL).

Insert and select only: this module has no UPDATE or DELETE statement for the audit table.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from maaskit.storage.ports.audit import AuditQuery, StoredAuditEvent
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.audit import AuditEventRow

__all__ = ["SqlAuditStore"]

_T: sa.Table = AuditEventRow.__table__  # type: ignore[attr-defined]


class SqlAuditStore:
    """Audit events in ``maaskit_audit_log``.

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlAuditStore()"

    async def append(self, event: StoredAuditEvent) -> StoredAuditEvent:
        """Insert *event*; the database assigns the id."""
        async with self._db.transaction() as session:
            result = await session.execute(
                sa.insert(_T)
                .values(
                    created_at=event.created_at,
                    actor=event.actor,
                    action=event.action,
                    target=event.target,
                    outcome=event.outcome,
                    details_json=json.dumps(dict(event.details), sort_keys=True),
                )
                .returning(_T.c.id)
            )
            new_id = int(result.scalar_one())
        return StoredAuditEvent(
            id=new_id,
            created_at=event.created_at,
            actor=event.actor,
            action=event.action,
            target=event.target,
            outcome=event.outcome,
            details=event.details,
        )

    async def query(self, query: AuditQuery) -> list[StoredAuditEvent]:
        """Matching events, newest first."""
        stmt = sa.select(_T)
        if query.actor is not None:
            stmt = stmt.where(_T.c.actor == query.actor)
        if query.target is not None:
            stmt = stmt.where(_T.c.target == query.target)
        if query.action is not None:
            stmt = stmt.where(_T.c.action == query.action)
        if query.since is not None:
            stmt = stmt.where(_T.c.created_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(_T.c.created_at < query.until)
        stmt = stmt.order_by(_T.c.created_at.desc(), _T.c.id.desc()).limit(query.limit)
        async with self._db.session() as session:
            rows = (await session.execute(stmt)).mappings().all()
        return [
            StoredAuditEvent(
                id=int(row["id"]),
                created_at=row["created_at"],
                actor=row["actor"],
                action=row["action"],
                target=row["target"],
                outcome=row["outcome"],
                details=json.loads(row["details_json"]),
            )
            for row in rows
        ]
