"""In-process :class:`~maaskit.storage.ports.rbac.RbacStore` (tests, single process)."""

from __future__ import annotations

from collections.abc import Collection

from maaskit.storage.ports.rbac import RoleAssignment, RoleRecord

__all__ = ["MemoryRbacStore"]


class MemoryRbacStore:
    """Custom roles and assignments in dictionaries."""

    def __init__(self) -> None:
        self._roles: dict[str, RoleRecord] = {}
        self._assignments: dict[tuple[str, str, str | None], RoleAssignment] = {}

    def __repr__(self) -> str:
        return f"MemoryRbacStore(roles={len(self._roles)}, assignments={len(self._assignments)})"

    async def list_roles(self) -> list[RoleRecord]:
        """Every custom role, sorted by name."""
        return [self._roles[name] for name in sorted(self._roles)]

    async def create_role(self, role: RoleRecord) -> bool:
        """Store *role* unless the name is taken."""
        if role.name in self._roles:
            return False
        self._roles[role.name] = role
        return True

    async def update_role(self, role: RoleRecord) -> bool:
        """Replace an existing custom role."""
        if role.name not in self._roles:
            return False
        self._roles[role.name] = role
        return True

    async def delete_role(self, name: str) -> bool:
        """Delete a custom role."""
        return self._roles.pop(name, None) is not None

    async def assignments(self, user_id: str) -> list[RoleAssignment]:
        """The user's assignments, sorted by (role, team)."""
        found = [a for (uid, _, _), a in self._assignments.items() if uid == user_id]
        return sorted(found, key=lambda a: (a.role, a.team_id or ""))

    async def holders(self, roles: Collection[str]) -> list[RoleAssignment]:
        """Every assignment of any of *roles*."""
        wanted = set(roles)
        return [a for a in self._assignments.values() if a.role in wanted]

    async def add_assignment(self, assignment: RoleAssignment) -> bool:
        """Store *assignment* unless it exists."""
        key = (assignment.user_id, assignment.role, assignment.team_id)
        if key in self._assignments:
            return False
        self._assignments[key] = assignment
        return True

    async def remove_assignment(self, user_id: str, role: str, team_id: str | None) -> bool:
        """Remove one assignment."""
        return self._assignments.pop((user_id, role, team_id), None) is not None

    async def remove_all_assignments(self, user_id: str) -> int:
        """Remove every assignment of *user_id*."""
        keys = [key for key in self._assignments if key[0] == user_id]
        for key in keys:
            del self._assignments[key]
        return len(keys)
