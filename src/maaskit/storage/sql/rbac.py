"""SQL :class:`~maaskit.storage.ports.rbac.RbacStore` (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from maaskit.storage.ports.rbac import RoleAssignment, RoleRecord
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.tables.rbac import RoleRow, UserRoleRow

__all__ = ["SqlRbacStore"]

_ROLES: sa.Table = RoleRow.__table__  # type: ignore[attr-defined]
_ASSIGN: sa.Table = UserRoleRow.__table__  # type: ignore[attr-defined]
_GLOBAL = ""  # team_id of a global assignment (the column is part of the primary key)


def _role(row: sa.RowMapping) -> RoleRecord:
    return RoleRecord(
        name=row["name"],
        description=row["description"],
        permissions=frozenset(json.loads(row["permissions_json"])),
        parents=frozenset(json.loads(row["parents_json"])),
        builtin=False,
        created_at=row["created_at"],
    )


def _assignment(row: sa.RowMapping) -> RoleAssignment:
    return RoleAssignment(
        user_id=row["user_id"],
        role=row["role"],
        team_id=row["team_id"] or None,
        granted_by=row["granted_by"],
        granted_at=row["granted_at"],
    )


def _role_values(role: RoleRecord) -> dict[str, Any]:
    return {
        "description": role.description,
        "permissions_json": json.dumps(sorted(role.permissions)),
        "parents_json": json.dumps(sorted(role.parents)),
    }


class SqlRbacStore:
    """Custom roles in ``maaskit_roles``, assignments in ``maaskit_user_roles``.

    Args:
        db: the migrated :class:`~maaskit.storage.sql.database.Database`.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return "SqlRbacStore()"

    async def list_roles(self) -> list[RoleRecord]:
        """Every custom role, sorted by name."""
        async with self._db.session() as session:
            rows = (await session.execute(sa.select(_ROLES).order_by(_ROLES.c.name))).mappings().all()
        return [_role(r) for r in rows]

    async def create_role(self, role: RoleRecord) -> bool:
        """Insert *role*; ``False`` when the name is taken."""
        if role.created_at is None:
            raise ValueError("a stored role needs created_at")
        try:
            async with self._db.transaction() as session:
                await session.execute(
                    sa.insert(_ROLES).values(name=role.name, created_at=role.created_at, **_role_values(role))
                )
        except sa.exc.IntegrityError:
            return False
        return True

    async def update_role(self, role: RoleRecord) -> bool:
        """Replace description, permissions and parents of an existing role."""
        async with self._db.transaction() as session:
            result = await session.execute(
                sa.update(_ROLES).where(_ROLES.c.name == role.name).values(**_role_values(role))
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete_role(self, name: str) -> bool:
        """Delete a custom role."""
        async with self._db.transaction() as session:
            result = await session.execute(sa.delete(_ROLES).where(_ROLES.c.name == name))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def assignments(self, user_id: str) -> list[RoleAssignment]:
        """The user's assignments, sorted by (role, team)."""
        stmt = (
            sa.select(_ASSIGN).where(_ASSIGN.c.user_id == user_id).order_by(_ASSIGN.c.role, _ASSIGN.c.team_id)
        )
        async with self._db.session() as session:
            rows = (await session.execute(stmt)).mappings().all()
        return [_assignment(r) for r in rows]

    async def holders(self, roles: Collection[str]) -> list[RoleAssignment]:
        """Every assignment of any of *roles*."""
        names = sorted(set(roles))
        if not names:
            return []
        async with self._db.session() as session:
            rows = (
                (await session.execute(sa.select(_ASSIGN).where(_ASSIGN.c.role.in_(names)))).mappings().all()
            )
        return [_assignment(r) for r in rows]

    async def add_assignment(self, assignment: RoleAssignment) -> bool:
        """Insert *assignment*; ``False`` when it exists (or the user does not)."""
        try:
            async with self._db.transaction() as session:
                await session.execute(
                    sa.insert(_ASSIGN).values(
                        user_id=assignment.user_id,
                        role=assignment.role,
                        team_id=assignment.team_id or _GLOBAL,
                        granted_by=assignment.granted_by,
                        granted_at=assignment.granted_at,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    async def remove_assignment(self, user_id: str, role: str, team_id: str | None) -> bool:
        """Delete one assignment."""
        async with self._db.transaction() as session:
            result = await session.execute(
                sa.delete(_ASSIGN).where(
                    _ASSIGN.c.user_id == user_id,
                    _ASSIGN.c.role == role,
                    _ASSIGN.c.team_id == (team_id or _GLOBAL),
                )
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def remove_all_assignments(self, user_id: str) -> int:
        """Delete every assignment of *user_id* in one statement."""
        async with self._db.transaction() as session:
            result = await session.execute(sa.delete(_ASSIGN).where(_ASSIGN.c.user_id == user_id))
        return int(result.rowcount)  # type: ignore[attr-defined]
