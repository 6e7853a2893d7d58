"""One contract for the identity stores (users, RBAC, audit, access requests): memory, SQLite, PostgreSQL.

Also checks the ``0006_identity`` migration: it matches the table definitions exactly and
downgrades cleanly, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import maaskit.storage.sql.tables  # noqa: F401
from maaskit.storage.memory.access_requests import MemoryAccessRequestStore
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.storage.ports.access_requests import AccessRequestRecord, AccessRequestStore
from maaskit.storage.ports.audit import AuditQuery, AuditStore, StoredAuditEvent
from maaskit.storage.ports.rbac import RbacStore, RoleAssignment, RoleRecord
from maaskit.storage.ports.users import UserRecord, UserStore
from maaskit.storage.sql.access_requests import SqlAccessRequestStore
from maaskit.storage.sql.audit import SqlAuditStore
from maaskit.storage.sql.base import metadata
from maaskit.storage.sql.database import Database
from maaskit.storage.sql.rbac import SqlRbacStore
from maaskit.storage.sql.users import SqlUserStore
from maaskit.testing.clock import FakeClock

TABLES = {
    "maaskit_users",
    "maaskit_roles",
    "maaskit_user_roles",
    "maaskit_audit_log",
    "maaskit_access_requests",
}


@attrs.frozen
class Stores:
    users: UserStore
    rbac: RbacStore
    audit: AuditStore
    requests: AccessRequestStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores(MemoryUserStore(), MemoryRbacStore(), MemoryAuditStore(), MemoryAccessRequestStore())
    db: Database = request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")
    return Stores(SqlUserStore(db), SqlRbacStore(db), SqlAuditStore(db), SqlAccessRequestStore(db))


def user(clock: FakeClock, name: str, **changes: Any) -> UserRecord:
    now = clock.now()
    record = UserRecord(
        id=f"usr_{name.lower()}",
        username=name,
        username_normalized=name.lower(),
        password_hash="$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        email=f"{name.lower()}@example.com",
        display_name=None,
        enabled=True,
        protected=False,
        created_at=now,
        updated_at=now,
        password_changed_at=now,
    )
    return attrs.evolve(record, **changes)


async def test_user_store(stores: Stores, clock: FakeClock) -> None:
    s = stores.users
    bob = user(clock, "Bob")
    assert await s.insert(bob)
    assert not await s.insert(attrs.evolve(bob, id="usr_other"))  # same normalised name
    assert not await s.insert(attrs.evolve(bob, username_normalized="other"))  # same id
    assert await s.get(bob.id) == bob
    assert await s.get_by_username("bob") == bob
    assert await s.get("usr_missing") is None
    assert await s.get_by_username("missing") is None
    alice = user(clock, "alice", enabled=False)
    admin = user(clock, "admin", protected=True)
    assert await s.insert(alice)
    assert await s.insert(admin)
    assert [u.id for u in await s.list()] == [admin.id, alice.id, bob.id]
    assert [u.id for u in await s.list(enabled=False)] == [alice.id]
    assert [u.id for u in await s.list(after="admin", limit=1)] == [alice.id]
    assert {u.id for u in await s.get_many([bob.id, "usr_missing", alice.id])} == {bob.id, alice.id}
    assert await s.get_many([]) == []
    assert await s.find_protected() == admin
    clock.advance(5)
    changed = attrs.evolve(
        bob,
        username="hacked",
        username_normalized="hacked",
        enabled=False,
        password_hash="new",
        updated_at=clock.now(),
    )
    assert await s.update(changed)
    stored = await s.get(bob.id)
    assert stored is not None
    assert stored.username == "Bob"
    assert stored.username_normalized == "bob"
    assert stored.password_hash == "new"
    assert not stored.enabled
    assert stored.updated_at == clock.now()
    assert not await s.update(user(clock, "ghost"))
    assert await s.delete(bob.id)
    assert not await s.delete(bob.id)
    assert await s.get_by_username("bob") is None
    assert await s.insert(user(clock, "BOB"))  # the name is free again


async def test_rbac_store(stores: Stores, clock: FakeClock) -> None:
    users, s = stores.users, stores.rbac
    for name in ("bob", "amy"):
        await users.insert(user(clock, name))
    role = RoleRecord(
        name="billing",
        description="d",
        permissions={"budgets:manage", "app:x"},
        parents={"read_only"},
        created_at=clock.now(),
    )
    assert await s.create_role(role)
    assert not await s.create_role(role)
    assert await s.list_roles() == [role]
    wider = attrs.evolve(role, permissions={"budgets:manage"}, parents=frozenset(), description="e")
    assert await s.update_role(wider)
    assert await s.list_roles() == [wider]
    assert not await s.update_role(attrs.evolve(role, name="nope"))
    g = RoleAssignment(
        user_id="usr_bob", role="member", team_id=None, granted_by="system", granted_at=clock.now()
    )
    t = attrs.evolve(g, team_id="team_1")
    a = attrs.evolve(g, user_id="usr_amy", role="billing")
    for assignment in (g, t, a):
        assert await s.add_assignment(assignment)
    assert not await s.add_assignment(g)
    assert await s.assignments("usr_bob") == [g, t]
    assert {(x.user_id, x.team_id) for x in await s.holders(["member"])} == {
        ("usr_bob", None),
        ("usr_bob", "team_1"),
    }
    assert await s.holders([]) == []
    assert await s.remove_assignment("usr_bob", "member", "team_1")
    assert not await s.remove_assignment("usr_bob", "member", "team_1")
    assert await s.assignments("usr_bob") == [g]
    assert await s.remove_all_assignments("usr_amy") == 1
    assert await s.assignments("usr_amy") == []
    assert await s.delete_role("billing")
    assert not await s.delete_role("billing")


async def test_audit_store(stores: Stores, clock: FakeClock) -> None:
    s = stores.audit
    stored = []
    for i, (actor, target) in enumerate([("a", "x"), ("b", "x"), ("a", "y")]):
        ev = StoredAuditEvent(
            id=0,
            created_at=clock.now(),
            actor=actor,
            action=f"t.step{i}",
            target=target,
            outcome="success",
            details={"n": i, "ok": True, "s": "v"},
        )
        stored.append(await s.append(ev))
        clock.advance(1)
    ids = [e.id for e in stored]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3
    assert await s.query(AuditQuery()) == stored[::-1]
    assert [e.id for e in await s.query(AuditQuery(actor="a"))] == [ids[2], ids[0]]
    assert [e.id for e in await s.query(AuditQuery(target="x", limit=1))] == [ids[1]]
    assert [e.id for e in await s.query(AuditQuery(action="t.step1"))] == [ids[1]]
    since = stored[1].created_at
    assert [e.id for e in await s.query(AuditQuery(since=since))] == [ids[2], ids[1]]
    assert [e.id for e in await s.query(AuditQuery(until=since))] == [ids[0]]
    assert stored[0].details == {"n": 0, "ok": True, "s": "v"}
    same_time = [await s.append(attrs.evolve(stored[0], created_at=clock.now())) for _ in range(3)]
    assert [e.id for e in await s.query(AuditQuery(limit=3))] == [e.id for e in same_time[::-1]]


async def test_access_request_store(stores: Stores, clock: FakeClock) -> None:
    await stores.users.insert(user(clock, "bob"))
    s = stores.requests
    first = AccessRequestRecord(
        id="acr_1",
        user_id="usr_bob",
        reason="r",
        status="pending",
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    assert await s.insert(first)
    clock.advance(1)
    second = attrs.evolve(first, id="acr_2", created_at=clock.now(), updated_at=clock.now())
    assert not await s.insert(second)  # one pending request per user
    decided = attrs.evolve(
        first,
        status="rejected",
        decided_at=clock.now(),
        decided_by="usr_admin",
        decision_reason="no",
        updated_at=clock.now(),
    )
    assert await s.decide(decided, expected_status="pending")
    assert not await s.decide(attrs.evolve(first, status="approved"), expected_status="pending")
    assert await s.get("acr_1") == decided
    assert await s.insert(second)
    assert [r.id for r in await s.list()] == ["acr_2", "acr_1"]
    assert [r.id for r in await s.list(status="pending")] == ["acr_2"]
    assert [r.id for r in await s.list(user_id="usr_bob", limit=1)] == ["acr_2"]
    assert await s.get("acr_missing") is None
    assert not await s.decide(attrs.evolve(first, id="acr_missing"), expected_status="pending")


@pytest.fixture(params=["sqlite_db", "postgres_db"])
def db(request: pytest.FixtureRequest) -> Database:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_migration_matches_tables(db: Database) -> None:
    def diff(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with db.connect() as conn:
        diffs = await conn.run_sync(diff)
    mine = [d for d in diffs if any(name in repr(d) for name in TABLES)]
    assert mine == []


async def test_sql_user_delete_cascades(db: Database, clock: FakeClock) -> None:
    users, rbac, reqs = SqlUserStore(db), SqlRbacStore(db), SqlAccessRequestStore(db)
    await users.insert(user(clock, "bob"))
    await rbac.add_assignment(RoleAssignment("usr_bob", "member", None, "system", clock.now()))
    await reqs.insert(AccessRequestRecord("acr_1", "usr_bob", "r", "pending", clock.now(), clock.now()))
    assert await users.delete("usr_bob")
    assert await rbac.assignments("usr_bob") == []
    assert await reqs.get("acr_1") is None


async def test_migration_downgrade_and_upgrade(db: Database) -> None:
    def tables(conn: sa.Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    async with db.connect() as conn:
        assert await conn.run_sync(tables) >= TABLES
    await db.downgrade("0006_identity-1")
    async with db.connect() as conn:
        present = await conn.run_sync(tables)
    assert not TABLES & present
    assert "maaskit_setting_overrides" in present
    await db.migrate()
    async with db.connect() as conn:
        assert await conn.run_sync(tables) >= TABLES
    assert await db.current_revisions() == Database.head_revisions()


def test_time_filters_use_aware_datetimes(clock: FakeClock) -> None:
    assert (clock.now() - timedelta(seconds=1)).tzinfo is not None
