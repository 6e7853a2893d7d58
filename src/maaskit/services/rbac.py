"""Role-based access control: roles, permissions, inheritance, assignment without escalation.

Example::

    from maaskit.services.rbac import DefaultRbacService

    rbac = DefaultRbacService(rbac_store, user_store, audit_log)
    await rbac.assign_role(admin_id, bob_id, "member")            # audited
    assert await rbac.check_permission(bob_id, "keys:create")
    await rbac.enforce(bob_id, "users:manage")                      # raises ForbiddenError

Permissions are strings ``"<resource>:<action>"`` (see :data:`PERMISSIONS`); the special
permission ``"*"`` (held only by :data:`ADMIN_ROLE` unless an admin says otherwise) means every
permission. A role has its own permissions and inherits those of its parent roles; inheritance
cycles are refused. An assignment is global or limited to one team: a team-scoped assignment counts
only when a check names that team.

**Nobody can grant what they do not hold**: assigning or revoking a role needs ``roles:assign``
*and* every permission of the role (in the same scope); creating, changing or deleting a custom role
needs ``roles:manage`` and every permission of the role. Every change, and every refused attempt,
is written to the :class:`~maaskit.services.audit.AuditLog`.

Checks are fast: role closures are computed once per role snapshot, and each user's assignments are
cached for ``cache_ttl`` seconds (default 5; changes made through this instance invalidate at once,
changes made on another replica are seen by this service within ``cache_ttl``; pass ``cache_ttl=0``
to disable). Callers may cache on top: admission remembers a positive ``models:use`` check per API key
for its ``permission_ttl`` (default 5 s), so a key whose owner lost ``models:use`` (role removed,
account disabled) on another replica can still call models for up to ``cache_ttl + permission_ttl``
(10 s by default). Lower both to tighten that bound.
For a hot path that checks many permissions per request, :meth:`RbacService.permissions_for` returns
a :class:`PermissionSet` whose :meth:`PermissionSet.allows` is a plain set lookup.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Final, Protocol, runtime_checkable

import attrs
import structlog
from cachetools import TTLCache

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from maaskit.services.audit import AuditLog, AuditOutcome
from maaskit.storage.ports.rbac import RbacStore, RoleAssignment, RoleRecord
from maaskit.storage.ports.users import UserStore

__all__ = [
    "ADMIN_ROLE",
    "ALL_PERMISSIONS",
    "BUILTIN_ROLES",
    "MEMBER_ROLE",
    "PERMISSIONS",
    "READ_ONLY_ROLE",
    "SYSTEM_ACTOR",
    "TEAM_ADMIN_ROLE",
    "DefaultRbacService",
    "PermissionSet",
    "RbacService",
    "Role",
    "RoleAssignment",
    "assigned_permissions",
    "covers",
    "resolve_closure",
]

log = structlog.get_logger(__name__)

#: The wildcard permission: holds every permission, including application-defined ones.
ALL_PERMISSIONS: Final = "*"
#: The actor recorded for changes made by trusted code (bootstrap, scripts).
SYSTEM_ACTOR: Final = "system"

#: The permission catalog: every permission maaskit's own services and admin endpoints check.
PERMISSIONS: Final[frozenset[str]] = frozenset(
    {
        "access_requests:read",
        "access_requests:review",
        "audit:read",
        "budgets:manage",
        "keys:create",
        "keys:manage",
        "keys:read",
        "keys:revoke",
        "keys:update",
        "models:manage",
        "models:read",
        "models:use",
        "roles:assign",
        "roles:manage",
        "roles:read",
        "secrets:manage",
        "sessions:manage",
        "settings:manage",
        "subscriptions:manage",
        "subscriptions:read",
        "teams:manage",
        "teams:read",
        "usage:read",
        "users:manage",
        "users:read",
    }
)

ADMIN_ROLE: Final = "admin"
TEAM_ADMIN_ROLE: Final = "team_admin"
MEMBER_ROLE: Final = "member"
READ_ONLY_ROLE: Final = "read_only"

#: The roles defined in code (never stored, cannot be changed or deleted).
BUILTIN_ROLES: Final[Mapping[str, RoleRecord]] = {
    ADMIN_ROLE: RoleRecord(
        name=ADMIN_ROLE, description="Everything, including managing users and roles.",
        permissions=frozenset({ALL_PERMISSIONS}), builtin=True,
    ),
    READ_ONLY_ROLE: RoleRecord(
        name=READ_ONLY_ROLE, description="Read keys, models, teams, subscriptions and usage.",
        permissions=frozenset({"keys:read", "models:read", "teams:read", "subscriptions:read", "usage:read"}),
        builtin=True,
    ),
    MEMBER_ROLE: RoleRecord(
        name=MEMBER_ROLE, description="Use models and manage one's own API keys.",
        permissions=frozenset({"keys:create", "keys:update", "keys:revoke", "models:use"}),
        parents=frozenset({READ_ONLY_ROLE}), builtin=True,
    ),
    TEAM_ADMIN_ROLE: RoleRecord(
        name=TEAM_ADMIN_ROLE, description="Manage a team: its members' keys, budgets and roles below admin.",
        permissions=frozenset(
            {"teams:manage", "keys:manage", "budgets:manage", "subscriptions:manage", "users:read",
             "roles:read", "roles:assign"}
        ),
        parents=frozenset({MEMBER_ROLE}), builtin=True,
    ),
}  # fmt: skip

# always used with fullmatch(): "$" would also match before a trailing newline
_ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,63}")
_PERMISSION_RE = re.compile(r"[a-z][a-z0-9_]{0,63}:[a-z][a-z0-9_]{0,63}")
_MAX_DESCRIPTION = 512
_MAX_PERMISSIONS = 256


@attrs.frozen
class Role:
    """A role as callers see it.

    Attributes:
        name: unique name.
        description: human description.
        permissions: the role's own permissions.
        parents: the roles it inherits from.
        builtin: ``True`` for :data:`BUILTIN_ROLES`.
        effective_permissions: own plus inherited permissions.
    """

    name: str
    description: str
    permissions: frozenset[str]
    parents: frozenset[str]
    builtin: bool
    effective_permissions: frozenset[str]


@attrs.frozen
class PermissionSet:
    """The resolved permissions of one user in one scope; :meth:`allows` is a pure set lookup."""

    user_id: str
    team_id: str | None
    permissions: frozenset[str]

    def allows(self, permission: str) -> bool:
        """Whether *permission* is held (directly or through ``"*"``)."""
        return permission in self.permissions or ALL_PERMISSIONS in self.permissions


def resolve_closure(name: str, roles: Mapping[str, RoleRecord]) -> frozenset[str]:
    """Own plus inherited permissions of role *name*; unknown parents and cycles are ignored safely."""
    seen: set[str] = set()
    stack = [name]
    perms: set[str] = set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        role = roles.get(current)
        if role is None:
            continue
        perms |= role.permissions
        stack.extend(role.parents)
    return frozenset(perms)


def _ancestors(name: str, roles: Mapping[str, RoleRecord]) -> set[str]:
    seen: set[str] = set()
    stack = list(roles[name].parents) if name in roles else []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in roles:
            stack.extend(roles[current].parents)
    return seen


def _covers(held: frozenset[str], needed: Iterable[str]) -> bool:
    return ALL_PERMISSIONS in held or all(p in held for p in needed)


def covers(held: Collection[str], needed: Iterable[str]) -> bool:
    """Whether *held* includes every permission of *needed* (always, when *held* has ``"*"``).

    The no-escalation rule for acting on another user's behalf: administering a user
    (:class:`~maaskit.services.users.DefaultUserService`) or their API keys (the gateway's key routes)
    needs every permission that user holds.
    """
    return _covers(frozenset(held), needed)


async def assigned_permissions(rbac: RbacService, user_id: str) -> frozenset[str]:
    """Every permission *user_id* is assigned, in every scope, whether or not the account is enabled.

    That is what the user (or a key of theirs) holds once enabled, so it is what an actor must
    :func:`covers` to administer the user. Read from the store, not the permission cache; empty for
    an id without assignments (not a user, or a user without roles). Roles deleted meanwhile count
    for nothing.
    """
    perms: set[str] = set()
    for assignment in await rbac.user_roles(user_id):
        try:
            perms |= await rbac.role_permissions(assignment.role)
        except NotFoundError:
            continue
    return frozenset(perms)


@runtime_checkable
class RbacService(Protocol):
    """Roles, permissions and role assignments."""

    async def check_permission(self, user_id: str, permission: str, *, team_id: str | None = None) -> bool:
        """Whether the (enabled) user holds *permission*, globally or within *team_id*."""
        ...

    async def enforce(self, user_id: str, permission: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError("rbac.forbidden")`` unless the user holds *permission*."""
        ...

    async def permissions_for(self, user_id: str, *, team_id: str | None = None) -> PermissionSet:
        """The user's effective permissions in the scope (empty for unknown or disabled users)."""
        ...

    async def assign_role(
        self, actor_id: str, user_id: str, role: str, *, team_id: str | None = None
    ) -> RoleAssignment:
        """Grant *role*; the actor needs ``roles:assign`` and every permission of the role."""
        ...

    async def revoke_role(
        self, actor_id: str, user_id: str, role: str, *, team_id: str | None = None
    ) -> None:
        """Take *role* away; same rule as :meth:`assign_role`; never demotes the last or protected admin."""
        ...

    async def ensure_can_grant(self, actor_id: str, role: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError`` unless *actor_id* may assign *role* in that scope (no change made)."""
        ...

    async def grant_role_as_system(
        self, user_id: str, role: str, *, team_id: str | None = None
    ) -> RoleAssignment:
        """Trusted code only (bootstrap, scripts): grant *role* without an acting user."""
        ...

    async def remove_all_roles(self, user_id: str, *, actor_id: str = SYSTEM_ACTOR) -> int:
        """Remove every assignment of a user (used when the user is deleted)."""
        ...

    async def user_roles(self, user_id: str) -> list[RoleAssignment]:
        """The user's assignments."""
        ...

    async def role_permissions(self, role: str) -> frozenset[str]:
        """Own plus inherited permissions of *role*."""
        ...

    async def get_role(self, name: str) -> Role:
        """One role (built-in or custom)."""
        ...

    async def list_roles(self) -> list[Role]:
        """Built-in and custom roles, sorted by name."""
        ...

    async def create_role(
        self,
        actor_id: str,
        name: str,
        *,
        description: str = "",
        permissions: Collection[str] = (),
        parents: Collection[str] = (),
    ) -> Role:
        """Create a custom role; the actor needs ``roles:manage`` and every permission it would carry."""
        ...

    async def update_role(
        self,
        actor_id: str,
        name: str,
        *,
        description: str | None = None,
        permissions: Collection[str] | None = None,
        parents: Collection[str] | None = None,
    ) -> Role:
        """Change a custom role; inheritance cycles are refused."""
        ...

    async def delete_role(self, actor_id: str, name: str) -> None:
        """Delete a custom role that nobody holds and no role inherits from."""
        ...

    async def is_admin(self, user_id: str) -> bool:
        """Whether the user is enabled and globally holds a role carrying ``"*"``."""
        ...

    async def ensure_not_last_admin(self, user_id: str) -> None:
        """Raise ``ConflictError("users.last_admin")`` if the user is the only enabled admin."""
        ...

    def invalidate(self, user_id: str | None = None) -> None:
        """Drop cached data of one user (``None``: everything), e.g. after the user was disabled."""
        ...


@attrs.frozen
class _UserEntry:
    enabled: bool
    assignments: tuple[RoleAssignment, ...]


class DefaultRbacService:
    """The :class:`RbacService` over an :class:`~maaskit.storage.ports.rbac.RbacStore`.

    Args:
        store: custom roles and assignments.
        users: the user store (to know whether users exist and are enabled).
        audit: where every change and refusal is recorded.
        clock: time source (assignment timestamps, cache expiry).
        cache_ttl: seconds a user's assignments and the role snapshot stay cached (``0``: no cache).
        cache_size: how many users' assignments are cached.
    """

    def __init__(
        self,
        store: RbacStore,
        users: UserStore,
        audit: AuditLog,
        clock: Clock | None = None,
        *,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
    ) -> None:
        if cache_ttl < 0:
            raise ValidationError("config.invalid", setting="cache_ttl", reason="must be >= 0")
        self._store = store
        self._users = users
        self._audit = audit
        self._clock = clock or SystemClock()
        self._ttl = float(cache_ttl)
        self._user_cache: TTLCache[str, _UserEntry] | None = (
            TTLCache(maxsize=cache_size, ttl=self._ttl, timer=self._clock.monotonic)
            if self._ttl > 0
            else None
        )
        self._roles: dict[str, RoleRecord] | None = None
        self._roles_loaded_at = 0.0
        self._closures: dict[str, frozenset[str]] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"DefaultRbacService(cache_ttl={self._ttl})"

    # -- caches ---------------------------------------------------------------------------------

    def invalidate(self, user_id: str | None = None) -> None:
        """Drop cached data: one user's assignments, or (``None``) everything."""
        if user_id is None:
            self._roles = None
            self._closures = {}
            if self._user_cache is not None:
                self._user_cache.clear()
        elif self._user_cache is not None:
            self._user_cache.pop(user_id, None)

    async def _role_map(self) -> dict[str, RoleRecord]:
        now = self._clock.monotonic()
        if self._roles is None or self._ttl == 0 or now - self._roles_loaded_at >= self._ttl:
            custom = await self._store.list_roles()
            roles = {r.name: r for r in custom if r.name not in BUILTIN_ROLES}
            roles.update(BUILTIN_ROLES)
            self._roles = roles
            self._roles_loaded_at = now
            self._closures = {}
        return self._roles

    async def _closure(self, role: str) -> frozenset[str]:
        roles = await self._role_map()
        cached = self._closures.get(role)
        if cached is None:
            cached = resolve_closure(role, roles)
            self._closures[role] = cached
        return cached

    async def _user_entry(self, user_id: str) -> _UserEntry:
        if self._user_cache is not None:
            entry = self._user_cache.get(user_id)
            if entry is not None:
                return entry
        user = await self._users.get(user_id)
        if user is None:
            entry = _UserEntry(enabled=False, assignments=())
        else:
            entry = _UserEntry(
                enabled=user.enabled, assignments=tuple(await self._store.assignments(user_id))
            )
        if self._user_cache is not None:
            self._user_cache[user_id] = entry
        return entry

    async def _effective(self, entry: _UserEntry, team_id: str | None) -> frozenset[str]:
        if not entry.enabled:
            return frozenset()
        perms: set[str] = set()
        for a in entry.assignments:
            if a.team_id is None or a.team_id == team_id:
                perms |= await self._closure(a.role)
        return frozenset(perms)

    # -- checks ---------------------------------------------------------------------------------

    async def permissions_for(self, user_id: str, *, team_id: str | None = None) -> PermissionSet:
        """The user's effective permissions globally plus within *team_id*."""
        entry = await self._user_entry(user_id)
        return PermissionSet(
            user_id=user_id, team_id=team_id, permissions=await self._effective(entry, team_id)
        )

    async def check_permission(self, user_id: str, permission: str, *, team_id: str | None = None) -> bool:
        """Whether the user holds *permission*; unknown and disabled users hold nothing."""
        entry = await self._user_entry(user_id)
        if not entry.enabled:
            return False
        for a in entry.assignments:
            if a.team_id is None or a.team_id == team_id:
                perms = await self._closure(a.role)
                if permission in perms or ALL_PERMISSIONS in perms:
                    return True
        return False

    async def enforce(self, user_id: str, permission: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError("rbac.forbidden", permission=...)`` unless the user holds it."""
        if not await self.check_permission(user_id, permission, team_id=team_id):
            raise ForbiddenError("rbac.forbidden", permission=permission)

    # -- roles ----------------------------------------------------------------------------------

    def _to_role(self, record: RoleRecord, roles: Mapping[str, RoleRecord]) -> Role:
        return Role(
            name=record.name,
            description=record.description,
            permissions=record.permissions,
            parents=record.parents,
            builtin=record.builtin,
            effective_permissions=resolve_closure(record.name, roles),
        )

    async def _require_role(self, name: str) -> RoleRecord:
        roles = await self._role_map()
        record = roles.get(name)
        if record is None:
            # the snapshot may be stale: another replica could have created it
            self._roles = None
            roles = await self._role_map()
            record = roles.get(name)
        if record is None:
            raise NotFoundError("rbac.role_not_found", role=name[:64])
        return record

    async def role_permissions(self, role: str) -> frozenset[str]:
        """Own plus inherited permissions of *role* (cycle-safe)."""
        await self._require_role(role)
        return await self._closure(role)

    async def get_role(self, name: str) -> Role:
        """One role; ``NotFoundError("rbac.role_not_found")`` when unknown."""
        record = await self._require_role(name)
        return self._to_role(record, await self._role_map())

    async def list_roles(self) -> list[Role]:
        """Every role, sorted by name."""
        roles = await self._role_map()
        return [self._to_role(roles[name], roles) for name in sorted(roles)]

    async def user_roles(self, user_id: str) -> list[RoleAssignment]:
        """The user's assignments, read from the store (not the cache)."""
        return await self._store.assignments(user_id)

    # -- authorisation of changes ---------------------------------------------------------------

    async def _deny(
        self, actor_id: str, action: str, target: str, code: str, **details: str
    ) -> ForbiddenError:
        await self._audit.record(
            actor_id, action, target, AuditOutcome.DENIED, details={"reason": code, **details}
        )
        return ForbiddenError(code, **details)

    async def _actor_covers(
        self, actor_id: str, gate: str, needed: frozenset[str], team_id: str | None
    ) -> tuple[bool, str]:
        """(allowed, missing permission or '')."""
        entry = await self._user_entry(actor_id)
        held = await self._effective(entry, team_id)
        if not (gate in held or ALL_PERMISSIONS in held):
            return False, gate
        if _covers(held, needed):
            return True, ""
        missing = sorted(p for p in needed if p not in held)
        return False, missing[0] if missing else gate

    async def ensure_can_grant(self, actor_id: str, role: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError("rbac.escalation")`` unless the actor may assign *role* in the scope."""
        await self._require_role(role)
        needed = await self._closure(role)
        ok, missing = await self._actor_covers(actor_id, "roles:assign", needed, team_id)
        if not ok:
            raise ForbiddenError("rbac.escalation", role=role, permission=missing)

    async def _check_target(self, user_id: str) -> None:
        if await self._users.get(user_id) is None:
            raise NotFoundError("users.not_found", user_id=user_id[:64])

    async def _admin_roles(self) -> frozenset[str]:
        roles = await self._role_map()
        result = set()
        for name in roles:
            if ALL_PERMISSIONS in await self._closure(name):
                result.add(name)
        return frozenset(result)

    async def is_admin(self, user_id: str) -> bool:
        """Whether the user is enabled and holds, globally, a role that carries ``"*"``."""
        user = await self._users.get(user_id)
        if user is None or not user.enabled:
            return False
        admin_roles = await self._admin_roles()
        return any(
            a.team_id is None and a.role in admin_roles for a in await self._store.assignments(user_id)
        )

    async def _other_enabled_admins(self, user_id: str, admin_roles: frozenset[str]) -> bool:
        holders = {a.user_id for a in await self._store.holders(admin_roles) if a.team_id is None}
        holders.discard(user_id)
        if not holders:
            return False
        return any(u.enabled for u in await self._users.get_many(holders))

    async def ensure_not_last_admin(self, user_id: str) -> None:
        """Raise ``ConflictError("users.last_admin")`` if *user_id* is the only enabled admin."""
        if not await self.is_admin(user_id):
            return
        if not await self._other_enabled_admins(user_id, await self._admin_roles()):
            raise ConflictError("users.last_admin")

    # -- assignment -----------------------------------------------------------------------------

    async def assign_role(
        self, actor_id: str, user_id: str, role: str, *, team_id: str | None = None
    ) -> RoleAssignment:
        """Grant *role* to *user_id* (globally or within *team_id*).

        Raises:
            NotFoundError: ``rbac.role_not_found`` / ``users.not_found``.
            ForbiddenError: ``rbac.escalation`` when the actor lacks ``roles:assign`` or any permission
                of the role in that scope.
            ConflictError: ``rbac.already_assigned``.
        """
        _check_team(team_id)
        await self._require_role(role)
        needed = await self._closure(role)
        ok, missing = await self._actor_covers(actor_id, "roles:assign", needed, team_id)
        if not ok:
            raise await self._deny(
                actor_id,
                "rbac.role_assigned",
                user_id[:256],
                "rbac.escalation",
                role=role,
                permission=missing,
            )
        await self._check_target(user_id)
        return await self._add(actor_id, user_id, role, team_id)

    async def grant_role_as_system(
        self, user_id: str, role: str, *, team_id: str | None = None
    ) -> RoleAssignment:
        """Grant *role* as :data:`SYSTEM_ACTOR`, with no escalation check.

        For trusted code only (bootstrap, migrations, CLI scripts); never call it with input from a
        request. Recorded in the audit log with actor ``"system"``.
        """
        _check_team(team_id)
        await self._require_role(role)
        await self._check_target(user_id)
        return await self._add(SYSTEM_ACTOR, user_id, role, team_id)

    async def _add(self, actor_id: str, user_id: str, role: str, team_id: str | None) -> RoleAssignment:
        assignment = RoleAssignment(
            user_id=user_id, role=role, team_id=team_id, granted_by=actor_id, granted_at=self._clock.now()
        )
        if not await self._store.add_assignment(assignment):
            raise ConflictError("rbac.already_assigned", role=role)
        self.invalidate(user_id)
        await self._audit.record(
            actor_id, "rbac.role_assigned", user_id, AuditOutcome.SUCCESS, details=_scope(role, team_id)
        )
        log.info("rbac.role_assigned", role=role, team_id=team_id)
        return assignment

    async def revoke_role(
        self, actor_id: str, user_id: str, role: str, *, team_id: str | None = None
    ) -> None:
        """Take *role* away from *user_id* in the scope.

        Raises:
            NotFoundError: ``rbac.role_not_found`` / ``rbac.not_assigned``.
            ForbiddenError: ``rbac.escalation`` (same rule as assigning) or ``users.protected`` (demoting
                the protected default admin).
            ConflictError: ``users.last_admin`` when this would leave no enabled admin.
        """
        _check_team(team_id)
        await self._require_role(role)
        needed = await self._closure(role)
        ok, missing = await self._actor_covers(actor_id, "roles:assign", needed, team_id)
        if not ok:
            raise await self._deny(
                actor_id, "rbac.role_revoked", user_id[:256], "rbac.escalation", role=role, permission=missing
            )
        async with self._lock:
            current = await self._store.assignments(user_id)
            if not any(a.role == role and a.team_id == team_id for a in current):
                raise NotFoundError("rbac.not_assigned", role=role)
            admin_roles = await self._admin_roles()
            if team_id is None and role in admin_roles:
                user = await self._users.get(user_id)
                if user is not None and user.protected:
                    raise await self._deny(actor_id, "rbac.role_revoked", user_id, "users.protected")
                still_admin = any(
                    a.team_id is None and a.role in admin_roles and a.role != role for a in current
                )
                if (
                    not still_admin
                    and user is not None
                    and user.enabled
                    and not await self._other_enabled_admins(user_id, admin_roles)
                ):
                    raise ConflictError("users.last_admin")
            if not await self._store.remove_assignment(user_id, role, team_id):
                raise NotFoundError("rbac.not_assigned", role=role)
            self.invalidate(user_id)
        await self._audit.record(
            actor_id, "rbac.role_revoked", user_id, AuditOutcome.SUCCESS, details=_scope(role, team_id)
        )
        log.info("rbac.role_revoked", role=role, team_id=team_id)

    async def remove_all_roles(self, user_id: str, *, actor_id: str = SYSTEM_ACTOR) -> int:
        """Remove every assignment of *user_id* (used by user deletion); audited.

        Raises:
            ForbiddenError: ``users.protected`` for the protected default admin.
            ConflictError: ``users.last_admin`` when the user is the only enabled admin.
        """
        user = await self._users.get(user_id)
        if user is not None and user.protected:
            raise ForbiddenError("users.protected")
        async with self._lock:
            await self.ensure_not_last_admin(user_id)
            removed = await self._store.remove_all_assignments(user_id)
            self.invalidate(user_id)
        if removed:
            await self._audit.record(
                actor_id, "rbac.roles_cleared", user_id, AuditOutcome.SUCCESS, details={"removed": removed}
            )
        return removed

    # -- custom roles ---------------------------------------------------------------------------

    async def create_role(
        self,
        actor_id: str,
        name: str,
        *,
        description: str = "",
        permissions: Collection[str] = (),
        parents: Collection[str] = (),
    ) -> Role:
        """Create a custom role.

        Raises:
            ValidationError: ``rbac.invalid_role_name``, ``rbac.invalid_permission``,
                ``rbac.invalid_description``.
            NotFoundError: ``rbac.role_not_found`` for an unknown parent.
            ForbiddenError: ``rbac.escalation`` when the actor lacks ``roles:manage`` or any permission
                the role would carry.
            ConflictError: ``rbac.role_exists`` (also for built-in names), ``rbac.cycle``.
        """
        _check_role_name(name)
        perms, parent_set, desc = _check_definition(permissions, parents, description)
        if name in BUILTIN_ROLES:
            raise ConflictError("rbac.role_exists", role=name)
        async with self._lock:
            self._roles = None
            roles = dict(await self._role_map())
            for parent in parent_set:
                if parent not in roles:
                    raise NotFoundError("rbac.role_not_found", role=parent)
            if name in parent_set:
                raise ConflictError("rbac.cycle", role=name)
            record = RoleRecord(
                name=name,
                description=desc,
                permissions=perms,
                parents=parent_set,
                created_at=self._clock.now(),
            )
            roles[name] = record
            needed = resolve_closure(name, roles)
            ok, missing = await self._actor_covers(actor_id, "roles:manage", needed, None)
            if not ok:
                raise await self._deny(
                    actor_id, "rbac.role_created", name, "rbac.escalation", role=name, permission=missing
                )
            if not await self._store.create_role(record):
                raise ConflictError("rbac.role_exists", role=name)
            self.invalidate()
        await self._audit.record(
            actor_id, "rbac.role_created", name, AuditOutcome.SUCCESS,
            details={"permissions": ",".join(sorted(perms)), "parents": ",".join(sorted(parent_set))},
        )  # fmt: skip
        return self._to_role(record, roles)

    async def update_role(
        self,
        actor_id: str,
        name: str,
        *,
        description: str | None = None,
        permissions: Collection[str] | None = None,
        parents: Collection[str] | None = None,
    ) -> Role:
        """Change a custom role (``None`` keeps a field).

        The actor needs ``roles:manage`` and every permission of the role both before and after the
        change. Raises like :meth:`create_role`, plus ``rbac.builtin_role`` (``ForbiddenError``) for
        built-in roles and ``users.last_admin`` when the change would leave no enabled admin.
        """
        if name in BUILTIN_ROLES:
            raise ForbiddenError("rbac.builtin_role", role=name)
        async with self._lock:
            self._roles = None
            roles = dict(await self._role_map())
            old = roles.get(name)
            if old is None:
                raise NotFoundError("rbac.role_not_found", role=name[:64])
            perms, parent_set, desc = _check_definition(
                old.permissions if permissions is None else permissions,
                old.parents if parents is None else parents,
                old.description if description is None else description,
            )
            for parent in parent_set:
                if parent not in roles:
                    raise NotFoundError("rbac.role_not_found", role=parent)
            record = attrs.evolve(old, description=desc, permissions=perms, parents=parent_set)
            roles[name] = record
            if name in parent_set or name in _ancestors(name, roles):
                raise ConflictError("rbac.cycle", role=name)
            needed = resolve_closure(name, roles) | resolve_closure(name, self._roles or {})
            ok, missing = await self._actor_covers(actor_id, "roles:manage", needed, None)
            if not ok:
                raise await self._deny(
                    actor_id, "rbac.role_updated", name, "rbac.escalation", role=name, permission=missing
                )
            before_admin = await self._admin_roles()
            after_admin = frozenset(n for n in roles if ALL_PERMISSIONS in resolve_closure(n, roles))
            if before_admin - after_admin and not await self._some_admin_remains(after_admin):
                raise ConflictError("users.last_admin")
            if not await self._store.update_role(record):
                raise NotFoundError("rbac.role_not_found", role=name)
            self.invalidate()
        await self._audit.record(
            actor_id, "rbac.role_updated", name, AuditOutcome.SUCCESS,
            details={"permissions": ",".join(sorted(perms)), "parents": ",".join(sorted(parent_set))},
        )  # fmt: skip
        return self._to_role(record, roles)

    async def _some_admin_remains(self, admin_roles: frozenset[str]) -> bool:
        holders = {a.user_id for a in await self._store.holders(admin_roles) if a.team_id is None}
        return any(u.enabled for u in await self._users.get_many(holders)) if holders else False

    async def delete_role(self, actor_id: str, name: str) -> None:
        """Delete a custom role.

        Raises:
            ForbiddenError: ``rbac.builtin_role`` or ``rbac.escalation``.
            NotFoundError: ``rbac.role_not_found``.
            ConflictError: ``rbac.role_in_use`` while a user holds it or another role inherits from it.
        """
        if name in BUILTIN_ROLES:
            raise ForbiddenError("rbac.builtin_role", role=name)
        async with self._lock:
            self._roles = None
            roles = await self._role_map()
            if name not in roles:
                raise NotFoundError("rbac.role_not_found", role=name[:64])
            needed = resolve_closure(name, roles)
            ok, missing = await self._actor_covers(actor_id, "roles:manage", needed, None)
            if not ok:
                raise await self._deny(
                    actor_id, "rbac.role_deleted", name, "rbac.escalation", role=name, permission=missing
                )
            if any(name in r.parents for r in roles.values()) or await self._store.holders([name]):
                raise ConflictError("rbac.role_in_use", role=name)
            if not await self._store.delete_role(name):
                raise NotFoundError("rbac.role_not_found", role=name)
            self.invalidate()
        await self._audit.record(actor_id, "rbac.role_deleted", name, AuditOutcome.SUCCESS)


def _scope(role: str, team_id: str | None) -> dict[str, str | int | bool]:
    details: dict[str, str | int | bool] = {"role": role}
    if team_id is not None:
        details["team_id"] = team_id
    return details


def _check_team(team_id: str | None) -> None:
    if team_id is not None and (not isinstance(team_id, str) or not 1 <= len(team_id) <= 64):
        raise ValidationError("rbac.invalid_team", reason="a team id is 1..64 characters")


def _check_role_name(name: str) -> None:
    if not isinstance(name, str) or not _ROLE_NAME_RE.fullmatch(name):
        raise ValidationError("rbac.invalid_role_name", reason="2..64 characters: a-z, 0-9 and _")


def _check_definition(
    permissions: Collection[str], parents: Collection[str], description: str
) -> tuple[frozenset[str], frozenset[str], str]:
    if isinstance(permissions, str) or isinstance(parents, str):
        raise ValidationError("rbac.invalid_permission", permission="(a single string; pass a collection)")
    perms = frozenset(permissions)
    if len(perms) > _MAX_PERMISSIONS:
        raise ValidationError("rbac.invalid_permission", permission=f"more than {_MAX_PERMISSIONS}")
    for perm in perms:
        if not isinstance(perm, str) or not (perm == ALL_PERMISSIONS or _PERMISSION_RE.fullmatch(perm)):
            raise ValidationError("rbac.invalid_permission", permission=str(perm)[:64])
    parent_set = frozenset(parents)
    for parent in parent_set:
        _check_role_name(parent)
    if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION:
        raise ValidationError("rbac.invalid_description", max=_MAX_DESCRIPTION)
    return perms, parent_set, description
