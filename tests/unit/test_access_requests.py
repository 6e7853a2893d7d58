"""Access requests: one pending per user, approve through RBAC (no escalation), no self-decision."""

from __future__ import annotations

import attrs
import pytest

from maaskit.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from maaskit.services.access_requests import (
    AccessRequestService,
    AccessRequestStatus,
    DefaultAccessRequestService,
)
from maaskit.services.audit import AuditOutcome, DefaultAuditLog
from maaskit.services.rbac import ADMIN_ROLE, MEMBER_ROLE, TEAM_ADMIN_ROLE, DefaultRbacService
from maaskit.storage.memory.access_requests import MemoryAccessRequestStore
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.storage.ports.users import UserRecord
from maaskit.testing.clock import FakeClock


@attrs.define
class Stack:
    requests: DefaultAccessRequestService
    rbac: DefaultRbacService
    audit: DefaultAuditLog
    users: MemoryUserStore
    clock: FakeClock

    async def user(self, name: str, *roles: str) -> str:
        now = self.clock.now()
        record = UserRecord(
            id=f"usr_{name}",
            username=name,
            username_normalized=name,
            password_hash="x",
            email=None,
            display_name=None,
            enabled=True,
            protected=False,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        await self.users.insert(record)
        for role in roles:
            await self.rbac.grant_role_as_system(record.id, role)
        return record.id


@pytest.fixture
def stack(clock: FakeClock) -> Stack:
    users = MemoryUserStore()
    audit = DefaultAuditLog(MemoryAuditStore(), clock)
    rbac = DefaultRbacService(MemoryRbacStore(), users, audit, clock)
    svc = DefaultAccessRequestService(MemoryAccessRequestStore(), users, rbac, audit, clock)
    return Stack(svc, rbac, audit, users, clock)


async def test_request_and_approve(stack: Stack) -> None:
    assert isinstance(stack.requests, AccessRequestService)
    admin = await stack.user("root", ADMIN_ROLE)
    new = await stack.user("newbie")
    req = await stack.requests.request_access(new, "  I run the evaluations  ")
    assert req.status is AccessRequestStatus.PENDING
    assert req.reason == "I run the evaluations"
    with pytest.raises(ConflictError) as info:
        await stack.requests.request_access(new, "again")
    assert info.value.code == "access_requests.pending_exists"
    assert [r.id for r in await stack.requests.list(status="pending")] == [req.id]
    stack.clock.advance(60)
    approved = await stack.requests.approve(req.id, admin, MEMBER_ROLE)
    assert approved.status is AccessRequestStatus.APPROVED
    assert approved.decided_by == admin
    assert approved.role == MEMBER_ROLE
    assert approved.decided_at is not None
    assert approved.decided_at > approved.created_at
    assert await stack.rbac.check_permission(new, "models:use")
    assert await stack.requests.list(status="pending") == []
    with pytest.raises(ConflictError) as info:
        await stack.requests.approve(req.id, admin, MEMBER_ROLE)
    assert info.value.code == "access_requests.already_decided"
    with pytest.raises(ConflictError) as info:  # now holds a role: no new request
        await stack.requests.request_access(new, "more please")
    assert info.value.code == "access_requests.has_role"
    audited = await stack.audit.query(target=req.id)
    assert [e.action for e in audited] == ["access_requests.approved", "access_requests.requested"]


async def test_reject_then_ask_again(stack: Stack) -> None:
    admin = await stack.user("root", ADMIN_ROLE)
    new = await stack.user("newbie")
    req = await stack.requests.request_access(new, "please")
    rejected = await stack.requests.reject(req.id, admin, "who are you?")
    assert rejected.status is AccessRequestStatus.REJECTED
    assert rejected.decision_reason == "who are you?"
    assert not await stack.rbac.user_roles(new)
    again = await stack.requests.request_access(new, "I am the new intern")
    assert {r.id for r in await stack.requests.list(user_id=new)} == {req.id, again.id}
    assert [r.id for r in await stack.requests.list(status=AccessRequestStatus.REJECTED)] == [req.id]


async def test_no_self_decision_even_for_admins(stack: Stack) -> None:
    await stack.user("root", ADMIN_ROLE)
    lonely = await stack.user("lonely")
    req = await stack.requests.request_access(lonely, "let me in")
    # even if the requester somehow holds the review permission
    await stack.rbac.grant_role_as_system(lonely, TEAM_ADMIN_ROLE, team_id="t1")
    for decide in (
        lambda: stack.requests.approve(req.id, lonely, MEMBER_ROLE),
        lambda: stack.requests.reject(req.id, lonely),
    ):
        with pytest.raises(ForbiddenError) as info:
            await decide()
        assert info.value.code == "access_requests.self_decision"
    assert (await stack.requests.get(req.id)).status is AccessRequestStatus.PENDING
    assert any(e.outcome is AuditOutcome.DENIED for e in await stack.audit.query(target=req.id))


async def test_approver_needs_review_permission_and_cannot_escalate(stack: Stack) -> None:
    root = await stack.user("root", ADMIN_ROLE)
    member = await stack.user("member", MEMBER_ROLE)
    new = await stack.user("newbie")
    req = await stack.requests.request_access(new, "please")
    with pytest.raises(ForbiddenError) as info:
        await stack.requests.approve(req.id, member, MEMBER_ROLE)
    assert info.value.code == "rbac.forbidden"
    await stack.rbac.create_role(
        root, "gatekeeper", permissions=["access_requests:review", "roles:assign"], parents=[MEMBER_ROLE]
    )
    keeper = await stack.user("keeper", "gatekeeper")
    with pytest.raises(ForbiddenError) as info:
        await stack.requests.approve(req.id, keeper, ADMIN_ROLE)
    assert info.value.code == "rbac.escalation"
    assert (await stack.requests.get(req.id)).status is AccessRequestStatus.PENDING
    assert not await stack.rbac.user_roles(new)
    await stack.requests.approve(req.id, keeper, MEMBER_ROLE)
    assert [a.role for a in await stack.rbac.user_roles(new)] == [MEMBER_ROLE]


async def test_validation_and_unknowns(stack: Stack) -> None:
    admin = await stack.user("root", ADMIN_ROLE)
    new = await stack.user("newbie")
    for reason in ("", "   ", "x" * 1001, "bell\x07"):
        with pytest.raises(ValidationError):
            await stack.requests.request_access(new, reason)
    with pytest.raises(NotFoundError):
        await stack.requests.request_access("usr_missing", "hello")
    with pytest.raises(NotFoundError):
        await stack.requests.get("acr_missing")
    with pytest.raises(NotFoundError):
        await stack.requests.approve("acr_missing", admin, MEMBER_ROLE)
    with pytest.raises(ValidationError):
        await stack.requests.list(status="maybe")
    with pytest.raises(ValidationError):
        await stack.requests.list(limit=0)
    req = await stack.requests.request_access(new, "hello")
    with pytest.raises(NotFoundError):
        await stack.requests.approve(req.id, admin, "no_such_role")
    assert (await stack.requests.get(req.id)).status is AccessRequestStatus.PENDING
