"""Store Protocol behind :mod:`maaskit.services.rbac`.

The store keeps *custom* roles (built-in roles are defined in code and never stored) and role
assignments. An assignment is global (``team_id is None``) or scoped to one team.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["RbacStore", "RoleAssignment", "RoleRecord"]


def _frozen(value: Collection[str]) -> frozenset[str]:
    return value if isinstance(value, frozenset) else frozenset(value)


@attrs.frozen
class RoleRecord:
    """A role: a name, its own permissions and the roles it inherits from.

    Attributes:
        name: unique role name (``[a-z][a-z0-9_]{1,63}``).
        description: human description.
        permissions: the role's own permission strings (``"keys:create"``...).
        parents: names of the roles whose permissions it inherits.
        builtin: ``True`` for the roles defined in code (never stored).
        created_at: creation time (``None`` for built-in roles).
    """

    name: str
    description: str
    permissions: frozenset[str] = attrs.field(converter=_frozen)
    parents: frozenset[str] = attrs.field(converter=_frozen, factory=frozenset)
    builtin: bool = False
    created_at: datetime | None = None


@attrs.frozen
class RoleAssignment:
    """A role held by a user, globally (``team_id=None``) or within one team.

    Attributes:
        user_id: the holder.
        role: the role name.
        team_id: the team the assignment is limited to, or ``None`` for everywhere.
        granted_by: who granted it (a user id or ``"system"``).
        granted_at: when.
    """

    user_id: str
    role: str
    team_id: str | None
    granted_by: str
    granted_at: datetime


@runtime_checkable
class RbacStore(Protocol):
    """Custom roles and role assignments."""

    async def list_roles(self) -> list[RoleRecord]:
        """Every stored (custom) role, sorted by name."""
        ...

    async def create_role(self, role: RoleRecord) -> bool:
        """Store *role*; ``False`` (and nothing written) when the name is taken."""
        ...

    async def update_role(self, role: RoleRecord) -> bool:
        """Replace the stored role with the same name; ``False`` when it does not exist."""
        ...

    async def delete_role(self, name: str) -> bool:
        """Delete a stored role; ``False`` when it does not exist."""
        ...

    async def assignments(self, user_id: str) -> list[RoleAssignment]:
        """The user's assignments, sorted by (role, team)."""
        ...

    async def holders(self, roles: Collection[str]) -> list[RoleAssignment]:
        """Every assignment of any of *roles* (global and team-scoped)."""
        ...

    async def add_assignment(self, assignment: RoleAssignment) -> bool:
        """Store *assignment*; ``False`` when the user already holds that role in that scope."""
        ...

    async def remove_assignment(self, user_id: str, role: str, team_id: str | None) -> bool:
        """Remove one assignment; ``False`` when there was none."""
        ...

    async def remove_all_assignments(self, user_id: str) -> int:
        """Remove every assignment of *user_id* (one transaction); returns how many."""
        ...
