"""RbacService: permissions, inheritance, scopes, no escalation, admin protection, audit trail."""

from __future__ import annotations

import attrs
import pytest

from maaskit.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from maaskit.services.audit import AuditOutcome, DefaultAuditLog
from maaskit.services.rbac import (
    ADMIN_ROLE,
    BUILTIN_ROLES,
    MEMBER_ROLE,
    PERMISSIONS,
    READ_ONLY_ROLE,
    TEAM_ADMIN_ROLE,
    DefaultRbacService,
    RbacService,
    assigned_permissions,
    covers,
    resolve_closure,
)
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.storage.ports.rbac import RoleRecord
from maaskit.storage.ports.users import UserRecord
from maaskit.testing.clock import FakeClock


@attrs.define
class Stack:
    rbac: DefaultRbacService
    users: MemoryUserStore
    store: MemoryRbacStore
    audit: DefaultAuditLog
    clock: FakeClock

    async def user(self, name: str, *roles: str, protected: bool = False, enabled: bool = True) -> str:
        now = self.clock.now()
        record = UserRecord(
            id=f"usr_{name}",
            username=name,
            username_normalized=name,
            password_hash="x",
            email=None,
            display_name=None,
            enabled=enabled,
            protected=protected,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        assert await self.users.insert(record)
        for role in roles:
            await self.rbac.grant_role_as_system(record.id, role)
        return record.id


def make_stack(clock: FakeClock) -> Stack:
    users = MemoryUserStore()
    store = MemoryRbacStore()
    audit = DefaultAuditLog(MemoryAuditStore(), clock)
    return Stack(DefaultRbacService(store, users, audit, clock), users, store, audit, clock)


@pytest.fixture
def stack(clock: FakeClock) -> Stack:
    return make_stack(clock)


def test_protocol_and_catalog(stack: Stack) -> None:
    assert isinstance(stack.rbac, RbacService)
    assert {ADMIN_ROLE, TEAM_ADMIN_ROLE, MEMBER_ROLE, READ_ONLY_ROLE} <= set(BUILTIN_ROLES)
    for role in BUILTIN_ROLES.values():
        assert role.permissions <= PERMISSIONS | {"*"}, role.name


async def test_builtin_permissions_and_inheritance(stack: Stack) -> None:
    assert "keys:read" in await stack.rbac.role_permissions(MEMBER_ROLE)  # inherited from read_only
    assert await stack.rbac.role_permissions(READ_ONLY_ROLE) <= await stack.rbac.role_permissions(MEMBER_ROLE)
    assert await stack.rbac.role_permissions(MEMBER_ROLE) <= await stack.rbac.role_permissions(
        TEAM_ADMIN_ROLE
    )
    admin = await stack.user("root", ADMIN_ROLE)
    member = await stack.user("bob", MEMBER_ROLE)
    nobody = await stack.user("eve")
    for perm in sorted(PERMISSIONS):
        assert await stack.rbac.check_permission(admin, perm)
    assert await stack.rbac.check_permission(admin, "app:custom")  # "*" covers application permissions
    assert await stack.rbac.check_permission(member, "keys:create")
    assert not await stack.rbac.check_permission(member, "users:manage")
    assert not await stack.rbac.check_permission(nobody, "keys:read")
    assert not await stack.rbac.check_permission("usr_unknown", "keys:read")
    with pytest.raises(ForbiddenError) as info:
        await stack.rbac.enforce(member, "audit:read")
    assert info.value.code == "rbac.forbidden"
    assert info.value.params["permission"] == "audit:read"
    await stack.rbac.enforce(member, "models:use")


async def test_disabled_users_hold_nothing(stack: Stack) -> None:
    bob = await stack.user("bob", MEMBER_ROLE, enabled=False)
    assert not await stack.rbac.check_permission(bob, "keys:read")
    assert (await stack.rbac.permissions_for(bob)).permissions == frozenset()


async def test_team_scoped_assignment(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    bob = await stack.user("bob")
    await stack.rbac.assign_role(root, bob, TEAM_ADMIN_ROLE, team_id="team_a")
    assert await stack.rbac.check_permission(bob, "teams:manage", team_id="team_a")
    assert not await stack.rbac.check_permission(bob, "teams:manage", team_id="team_b")
    assert not await stack.rbac.check_permission(bob, "teams:manage")
    perms = await stack.rbac.permissions_for(bob, team_id="team_a")
    assert perms.allows("keys:manage")
    assert not perms.allows("users:manage")


async def test_no_escalation_on_assign(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    lead = await stack.user("lead")
    await stack.rbac.assign_role(root, lead, TEAM_ADMIN_ROLE, team_id="t1")
    bob = await stack.user("bob")
    # a team admin can grant member (all of whose permissions it holds) in its own team
    await stack.rbac.assign_role(lead, bob, MEMBER_ROLE, team_id="t1")
    # ... but not admin, not globally, not in another team
    for role, team in [(ADMIN_ROLE, "t1"), (MEMBER_ROLE, None), (MEMBER_ROLE, "t2"), (TEAM_ADMIN_ROLE, None)]:
        with pytest.raises(ForbiddenError) as info:
            await stack.rbac.assign_role(lead, bob, role, team_id=team)
        assert info.value.code == "rbac.escalation"
    # a member cannot grant anything: it lacks roles:assign
    with pytest.raises(ForbiddenError):
        await stack.rbac.assign_role(bob, bob, READ_ONLY_ROLE, team_id="t1")
    denied = await stack.audit.query(actor=lead, action="rbac.role_assigned")
    assert [e.outcome for e in denied] == [AuditOutcome.DENIED] * 4 + [AuditOutcome.SUCCESS]


async def test_cannot_grant_custom_role_carrying_unheld_permission(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    lead = await stack.user("lead", TEAM_ADMIN_ROLE)
    bob = await stack.user("bob")
    await stack.rbac.create_role(root, "auditor", permissions=["audit:read"], parents=[MEMBER_ROLE])
    with pytest.raises(ForbiddenError) as info:
        await stack.rbac.assign_role(lead, bob, "auditor")
    assert info.value.params["permission"] == "audit:read"
    assert await stack.rbac.user_roles(bob) == []


async def test_revoke_needs_the_same_permissions(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    other = await stack.user("other", ADMIN_ROLE)
    lead = await stack.user("lead", TEAM_ADMIN_ROLE)
    with pytest.raises(ForbiddenError):
        await stack.rbac.revoke_role(lead, other, ADMIN_ROLE)
    await stack.rbac.revoke_role(root, other, ADMIN_ROLE)
    assert not await stack.rbac.check_permission(other, "users:manage")
    with pytest.raises(NotFoundError) as info:
        await stack.rbac.revoke_role(root, other, ADMIN_ROLE)
    assert info.value.code == "rbac.not_assigned"


async def test_last_admin_and_protected_admin(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE, protected=True)
    with pytest.raises(ForbiddenError) as info:
        await stack.rbac.revoke_role(root, root, ADMIN_ROLE)
    assert info.value.code == "users.protected"
    with pytest.raises(ForbiddenError):
        await stack.rbac.remove_all_roles(root)
    with pytest.raises(ConflictError) as cinfo:
        await stack.rbac.ensure_not_last_admin(root)
    assert cinfo.value.code == "users.last_admin"

    # an unprotected sole admin cannot be demoted either
    solo = make_stack(stack.clock)
    a = await solo.user("a", ADMIN_ROLE)
    with pytest.raises(ConflictError):
        await solo.rbac.revoke_role(a, a, ADMIN_ROLE)
    b = await solo.user("b", ADMIN_ROLE)
    await solo.rbac.revoke_role(a, a, ADMIN_ROLE)  # b remains
    assert await solo.rbac.is_admin(b)
    assert not await solo.rbac.is_admin(a)
    with pytest.raises(ConflictError):
        await solo.rbac.revoke_role(b, b, ADMIN_ROLE)


async def test_custom_roles_lifecycle(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    role = await stack.rbac.create_role(
        root,
        "billing",
        description="Budgets",
        permissions=["budgets:manage", "app:invoice"],
        parents=[READ_ONLY_ROLE],
    )
    assert role.effective_permissions >= {"budgets:manage", "app:invoice", "keys:read"}
    assert "billing" in {r.name for r in await stack.rbac.list_roles()}
    with pytest.raises(ConflictError):
        await stack.rbac.create_role(root, "billing")
    with pytest.raises(ConflictError):
        await stack.rbac.create_role(root, ADMIN_ROLE)
    bob = await stack.user("bob")
    await stack.rbac.assign_role(root, bob, "billing")
    with pytest.raises(ConflictError) as info:
        await stack.rbac.delete_role(root, "billing")
    assert info.value.code == "rbac.role_in_use"
    updated = await stack.rbac.update_role(root, "billing", permissions=["budgets:manage"])
    assert "app:invoice" not in updated.effective_permissions
    assert not await stack.rbac.check_permission(bob, "app:invoice")  # cache invalidated at once
    await stack.rbac.revoke_role(root, bob, "billing")
    await stack.rbac.delete_role(root, "billing")
    with pytest.raises(NotFoundError):
        await stack.rbac.get_role("billing")
    for name in (ADMIN_ROLE, MEMBER_ROLE):
        with pytest.raises(ForbiddenError):
            await stack.rbac.delete_role(root, name)
        with pytest.raises(ForbiddenError):
            await stack.rbac.update_role(root, name, permissions=[])
    actions = [e.action for e in await stack.audit.query(actor=root)]
    for action in ("rbac.role_created", "rbac.role_updated", "rbac.role_deleted", "rbac.role_revoked"):
        assert action in actions


async def test_inheritance_cycles_are_refused(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    await stack.rbac.create_role(root, "r_a", permissions=["app:a"])
    await stack.rbac.create_role(root, "r_b", permissions=["app:b"], parents=["r_a"])
    await stack.rbac.create_role(root, "r_c", parents=["r_b"])
    with pytest.raises(ConflictError) as info:
        await stack.rbac.update_role(root, "r_a", parents=["r_c"])
    assert info.value.code == "rbac.cycle"
    with pytest.raises(ConflictError):
        await stack.rbac.update_role(root, "r_a", parents=["r_a"])
    assert await stack.rbac.role_permissions("r_c") == {"app:a", "app:b"}


def test_resolve_closure_is_cycle_safe() -> None:
    roles = {
        "a": RoleRecord(name="a", description="", permissions={"p:a"}, parents={"b"}),
        "b": RoleRecord(name="b", description="", permissions={"p:b"}, parents={"a", "missing"}),
    }
    assert resolve_closure("a", roles) == {"p:a", "p:b"}
    assert resolve_closure("missing", roles) == frozenset()


async def test_non_holder_cannot_create_or_widen_roles(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    lead = await stack.user("lead", TEAM_ADMIN_ROLE)
    with pytest.raises(ForbiddenError):  # lacks roles:manage
        await stack.rbac.create_role(lead, "mine", permissions=["keys:read"])
    await stack.rbac.create_role(root, "managers", permissions=["roles:manage", "keys:read"])
    await stack.rbac.assign_role(root, lead, "managers")
    await stack.rbac.create_role(lead, "mine", permissions=["keys:read"])
    for perms in (["users:manage"], ["*"]):
        with pytest.raises(ForbiddenError):
            await stack.rbac.update_role(lead, "mine", permissions=perms)
        with pytest.raises(ForbiddenError):
            await stack.rbac.create_role(lead, "mine2", permissions=perms)
    with pytest.raises(ForbiddenError):
        await stack.rbac.create_role(lead, "mine3", parents=[ADMIN_ROLE])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "Bad Name"}, "rbac.invalid_role_name"),
        ({"name": "ok_name", "permissions": ["nocolon"]}, "rbac.invalid_permission"),
        ({"name": "ok_name", "permissions": "keys:read"}, "rbac.invalid_permission"),
        ({"name": "ok_name", "description": "x" * 513}, "rbac.invalid_description"),
        # "$" would match before a trailing newline
        ({"name": "ok_name\n"}, "rbac.invalid_role_name"),
        ({"name": "ok_name", "permissions": ["keys:read\n"]}, "rbac.invalid_permission"),
        ({"name": "ok_name", "parents": ["member\n"]}, "rbac.invalid_role_name"),
    ],
)
async def test_invalid_role_definitions(stack: Stack, kwargs: dict[str, object], code: str) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    with pytest.raises(ValidationError) as info:
        await stack.rbac.create_role(root, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    assert await stack.store.list_roles() == []


async def test_unknown_role_and_user(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    with pytest.raises(NotFoundError) as info:
        await stack.rbac.assign_role(root, "usr_missing", MEMBER_ROLE)
    assert info.value.code == "users.not_found"
    with pytest.raises(NotFoundError) as info:
        await stack.rbac.assign_role(root, root, "nope")
    assert info.value.code == "rbac.role_not_found"
    with pytest.raises(ConflictError):
        await stack.rbac.assign_role(root, root, ADMIN_ROLE)
    with pytest.raises(ValidationError):
        await stack.rbac.assign_role(root, root, MEMBER_ROLE, team_id="")


async def test_cache_sees_changes_from_another_replica_after_ttl(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    bob = await stack.user("bob", MEMBER_ROLE)
    other_replica = DefaultRbacService(stack.store, stack.users, stack.audit, stack.clock, cache_ttl=5)
    assert await stack.rbac.check_permission(bob, "keys:create")  # cached here
    await other_replica.revoke_role(root, bob, MEMBER_ROLE)
    assert await stack.rbac.check_permission(bob, "keys:create")  # stale within the TTL
    stack.clock.advance(5)
    assert not await stack.rbac.check_permission(bob, "keys:create")
    uncached = DefaultRbacService(stack.store, stack.users, stack.audit, stack.clock, cache_ttl=0)
    await other_replica.assign_role(root, bob, MEMBER_ROLE)
    assert await uncached.check_permission(bob, "keys:create")


async def test_assigned_permissions_count_every_scope_and_disabled_users(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    dormant = await stack.user("dormant", ADMIN_ROLE, enabled=False)
    lead = await stack.user("lead", MEMBER_ROLE)
    await stack.rbac.assign_role(root, lead, TEAM_ADMIN_ROLE, team_id="team-a")
    assert (await stack.rbac.permissions_for(dormant)).permissions == frozenset()  # holds nothing now
    assert await assigned_permissions(stack.rbac, dormant) == {"*"}  # ... but would once enabled
    assert await assigned_permissions(stack.rbac, lead) == await stack.rbac.role_permissions(TEAM_ADMIN_ROLE)
    assert await assigned_permissions(stack.rbac, "svc-owner") == frozenset()  # not a user
    member = await stack.rbac.role_permissions(MEMBER_ROLE)
    assert covers({"*"}, {"*", "keys:read"})
    assert covers(member, await stack.rbac.role_permissions(READ_ONLY_ROLE))
    assert covers(member, frozenset())
    assert not covers(member, {"*"})
    assert not covers(member, await assigned_permissions(stack.rbac, lead))
