"""Properties of RBAC: inheritance closure is monotone; no sequence of grants by non-holders escalates."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.errors import MaasError
from maaskit.services.audit import DefaultAuditLog
from maaskit.services.rbac import (
    ADMIN_ROLE,
    ALL_PERMISSIONS,
    MEMBER_ROLE,
    READ_ONLY_ROLE,
    TEAM_ADMIN_ROLE,
    DefaultRbacService,
    resolve_closure,
)
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.storage.ports.rbac import RoleRecord
from maaskit.storage.ports.users import UserRecord
from maaskit.testing.clock import FakeClock

NAMES = [f"r{i}" for i in range(6)]
PERMS = ["p:a", "p:b", "p:c", "p:d", "p:e"]

role_graphs = st.fixed_dictionaries(
    {
        name: st.tuples(
            st.frozensets(st.sampled_from(PERMS), max_size=3), st.frozensets(st.sampled_from(NAMES))
        )
        for name in NAMES
    }
)


def build(graph: dict[str, tuple[frozenset[str], frozenset[str]]]) -> dict[str, RoleRecord]:
    return {
        n: RoleRecord(name=n, description="", permissions=p, parents=par) for n, (p, par) in graph.items()
    }


@given(role_graphs, st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(PERMS))
def test_closure_is_monotone(graph, role: str, extra_parent: str, extra_perm: str) -> None:  # type: ignore[no-untyped-def]
    roles = build(graph)
    before = {n: resolve_closure(n, roles) for n in NAMES}
    for n in NAMES:
        assert roles[n].permissions <= before[n]
        for parent in roles[n].parents:
            assert before[parent] <= before[n]  # a role holds everything its parents hold (cycles too)
    grown = dict(roles)
    grown[role] = RoleRecord(
        name=role,
        description="",
        permissions=roles[role].permissions | {extra_perm},
        parents=roles[role].parents | {extra_parent},
    )
    for n in NAMES:
        assert before[n] <= resolve_closure(n, grown)  # adding never removes anything


USERS = ["u1", "u2", "u3", "u4"]
ROLES = [ADMIN_ROLE, TEAM_ADMIN_ROLE, MEMBER_ROLE, READ_ONLY_ROLE, "assigner", "keyadmin"]
TEAMS = [None, "t1", "t2"]

operations = st.lists(
    st.tuples(
        st.sampled_from(["assign", "revoke"]),
        st.sampled_from(USERS),
        st.sampled_from(USERS),
        st.sampled_from(ROLES),
        st.sampled_from(TEAMS),
    ),
    max_size=25,
)
initial = st.fixed_dictionaries(
    {u: st.lists(st.tuples(st.sampled_from(ROLES[1:]), st.sampled_from(TEAMS)), max_size=2) for u in USERS}
)


async def scenario(
    start: dict[str, list[tuple[str, str | None]]], ops: list[tuple[str, str, str, str, str | None]]
) -> None:
    clock = FakeClock()
    users = MemoryUserStore()
    audit = DefaultAuditLog(MemoryAuditStore(), clock)
    rbac = DefaultRbacService(MemoryRbacStore(), users, audit, clock)
    now = clock.now()
    for name in ["root", *USERS]:
        await users.insert(
            UserRecord(
                id=name, username=name, username_normalized=name, password_hash="x", email=None,
                display_name=None, enabled=True, protected=False, created_at=now, updated_at=now,
                password_changed_at=now,
            )
        )  # fmt: skip
    await rbac.grant_role_as_system("root", ADMIN_ROLE)
    await rbac.create_role("root", "assigner", permissions=["roles:assign", "keys:read"])
    await rbac.create_role("root", "keyadmin", permissions=["keys:manage"], parents=["assigner"])
    for user, grants in start.items():
        for role, team in grants:
            with contextlib.suppress(MaasError):  # a duplicate
                await rbac.grant_role_as_system(user, role, team_id=team)

    async def union(team: str | None) -> frozenset[str]:
        perms: set[str] = set()
        for u in USERS:
            perms |= (await rbac.permissions_for(u, team_id=team)).permissions
        return frozenset(perms)

    ceiling = {team: await union(team) for team in TEAMS}
    successes = 0
    assert all(ALL_PERMISSIONS not in c for c in ceiling.values())
    for op, actor, target, role, team in ops:
        held = (await rbac.permissions_for(actor, team_id=team)).permissions
        needed = await rbac.role_permissions(role)
        try:
            if op == "assign":
                await rbac.assign_role(actor, target, role, team_id=team)
            else:
                await rbac.revoke_role(actor, target, role, team_id=team)
        except MaasError:
            continue
        successes += 1
        # a change only ever succeeds for an actor holding roles:assign and every permission of the role
        assert "roles:assign" in held
        assert needed <= held
        for scope in TEAMS:
            assert await union(scope) <= ceiling[scope]  # nobody among the non-admins gained anything new
    return successes


@settings(max_examples=60, deadline=None)
@given(initial, operations)
def test_no_escalation_through_assign_and_revoke(start, ops) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(scenario(start, ops))


def test_the_scenario_does_exercise_successful_changes() -> None:
    start: dict[str, list[tuple[str, str | None]]] = {
        "u1": [(TEAM_ADMIN_ROLE, None)],
        "u2": [],
        "u3": [],
        "u4": [],
    }
    ops: list[tuple[str, str, str, str, str | None]] = [
        ("assign", "u1", "u2", MEMBER_ROLE, None),  # allowed
        ("assign", "u2", "u3", MEMBER_ROLE, None),  # refused: member lacks roles:assign
        ("assign", "u1", "u3", "keyadmin", "t1"),  # allowed: team_admin holds keys:manage, keys:read
        ("revoke", "u1", "u2", MEMBER_ROLE, None),  # allowed
    ]
    assert asyncio.run(scenario(start, ops)) == 3
