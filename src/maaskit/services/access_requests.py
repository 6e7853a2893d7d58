"""Access requests: a signed-in user without a role asks for access; an admin approves or rejects.

Example::

    from maaskit.services.access_requests import DefaultAccessRequestService

    requests = DefaultAccessRequestService(store, users, rbac, audit_log)
    req = await requests.request_access(new_user_id, "I run the evaluation jobs")
    pending = await requests.list(status="pending")
    await requests.approve(req.id, admin_id, "member")      # grants the role through RbacService

Approving grants the role through :meth:`maaskit.services.rbac.RbacService.assign_role`, so the
approver needs ``access_requests:review``, ``roles:assign`` and every permission of the role (nobody
grants what they do not hold). Rejecting needs ``access_requests:review``. Nobody can decide their
own request. A user has at most one pending request. Every decision is audited.
"""

from __future__ import annotations

import builtins
import secrets
import unicodedata
from datetime import datetime
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

import attrs
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from maaskit.services.audit import AuditLog, AuditOutcome
from maaskit.services.rbac import RbacService
from maaskit.storage.ports.access_requests import AccessRequestRecord, AccessRequestStore
from maaskit.storage.ports.users import UserStore

__all__ = [
    "MAX_REASON_LENGTH",
    "REVIEW_PERMISSION",
    "AccessRequest",
    "AccessRequestService",
    "AccessRequestStatus",
    "DefaultAccessRequestService",
]

log = structlog.get_logger(__name__)

#: Longest accepted reason (characters), for the request and for a rejection.
MAX_REASON_LENGTH: Final = 1000
#: The permission needed to approve or reject requests.
REVIEW_PERMISSION: Final = "access_requests:review"


class AccessRequestStatus(StrEnum):
    """Where a request stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@attrs.frozen
class AccessRequest:
    """A request for access.

    Attributes:
        id: request id (``acr_...``).
        user_id: who asked.
        reason: the user's reason.
        status: :class:`AccessRequestStatus`.
        created_at: when it was made.
        updated_at: last change.
        decided_at: when it was approved or rejected.
        decided_by: the admin who decided.
        role: the role granted (approved requests).
        decision_reason: the admin's reason (rejected requests).
    """

    id: str
    user_id: str
    reason: str
    status: AccessRequestStatus
    created_at: datetime
    updated_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    role: str | None
    decision_reason: str | None


@runtime_checkable
class AccessRequestService(Protocol):
    """The user-access workflow."""

    async def request_access(self, user_id: str, reason: str) -> AccessRequest:
        """A signed-in user without any role asks for access."""
        ...

    async def get(self, request_id: str) -> AccessRequest:
        """One request."""
        ...

    async def list(
        self, *, status: AccessRequestStatus | str | None = None, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[AccessRequest]:
        """Requests, newest first (admin view; the caller checks ``access_requests:read``)."""
        ...

    async def approve(self, request_id: str, admin_id: str, role: str) -> AccessRequest:
        """Approve and grant *role* (no escalation, no self-approval)."""
        ...

    async def reject(self, request_id: str, admin_id: str, reason: str | None = None) -> AccessRequest:
        """Reject (no self-rejection)."""
        ...


def _check_reason(reason: str | None, *, required: bool) -> str | None:
    if reason is None and not required:
        return None
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("access_requests.invalid_reason", max=MAX_REASON_LENGTH)
    if len(reason) > MAX_REASON_LENGTH or any(
        unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in reason
    ):
        raise ValidationError("access_requests.invalid_reason", max=MAX_REASON_LENGTH)
    return reason.strip()


def _to_request(record: AccessRequestRecord) -> AccessRequest:
    return AccessRequest(
        id=record.id,
        user_id=record.user_id,
        reason=record.reason,
        status=AccessRequestStatus(record.status),
        created_at=record.created_at,
        updated_at=record.updated_at,
        decided_at=record.decided_at,
        decided_by=record.decided_by,
        role=record.role,
        decision_reason=record.decision_reason,
    )


class DefaultAccessRequestService:
    """The :class:`AccessRequestService` over an :class:`AccessRequestStore`.

    Args:
        store: where requests live.
        users: the user store (the requester must exist and be enabled).
        rbac: grants the role on approval and checks the reviewer's permissions.
        audit: records every request and decision.
        clock: time source.
    """

    def __init__(
        self,
        store: AccessRequestStore,
        users: UserStore,
        rbac: RbacService,
        audit: AuditLog,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._users = users
        self._rbac = rbac
        self._audit = audit
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return "DefaultAccessRequestService()"

    async def request_access(self, user_id: str, reason: str) -> AccessRequest:
        """Ask for access.

        Raises:
            ValidationError: ``access_requests.invalid_reason`` (empty or over 1,000 characters).
            NotFoundError: ``users.not_found`` (also for a disabled account).
            ConflictError: ``access_requests.has_role`` (the user already holds a role) or
                ``access_requests.pending_exists``.
        """
        clean = _check_reason(reason, required=True)
        assert clean is not None
        user = await self._users.get(user_id) if isinstance(user_id, str) else None
        if user is None or not user.enabled:
            raise NotFoundError("users.not_found", user_id=str(user_id)[:64])
        if await self._rbac.user_roles(user_id):
            raise ConflictError("access_requests.has_role")
        now = self._clock.now()
        record = AccessRequestRecord(
            id=f"acr_{secrets.token_hex(12)}",
            user_id=user_id,
            reason=clean,
            status=AccessRequestStatus.PENDING.value,
            created_at=now,
            updated_at=now,
        )
        if not await self._store.insert(record):
            raise ConflictError("access_requests.pending_exists")
        await self._audit.record(user_id, "access_requests.requested", record.id, AuditOutcome.SUCCESS)
        return _to_request(record)

    async def get(self, request_id: str) -> AccessRequest:
        """One request; ``NotFoundError("access_requests.not_found")`` when unknown."""
        return _to_request(await self._record(request_id))

    async def _record(self, request_id: str) -> AccessRequestRecord:
        record = await self._store.get(request_id) if isinstance(request_id, str) else None
        if record is None:
            raise NotFoundError("access_requests.not_found", request_id=str(request_id)[:64])
        return record

    async def list(
        self, *, status: AccessRequestStatus | str | None = None, user_id: str | None = None, limit: int = 100
    ) -> builtins.list[AccessRequest]:
        """Requests, newest first; ``limit`` 1..1000."""
        if status is not None:
            try:
                status = AccessRequestStatus(status)
            except ValueError:
                raise ValidationError("access_requests.invalid_status", status=str(status)[:32]) from None
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ValidationError("access_requests.invalid_limit", max=1000)
        records = await self._store.list(
            status=status.value if status is not None else None, user_id=user_id, limit=limit
        )
        return [_to_request(r) for r in records]

    async def _pending_for_decision(self, request_id: str, admin_id: str, action: str) -> AccessRequestRecord:
        record = await self._record(request_id)
        if record.user_id == admin_id:
            await self._audit.record(
                admin_id, action, request_id, AuditOutcome.DENIED, details={"reason": "self_decision"}
            )
            raise ForbiddenError("access_requests.self_decision")
        if not await self._rbac.check_permission(admin_id, REVIEW_PERMISSION):
            await self._audit.record(
                admin_id, action, request_id, AuditOutcome.DENIED, details={"reason": "rbac.forbidden"}
            )
            raise ForbiddenError("rbac.forbidden", permission=REVIEW_PERMISSION)
        if record.status != AccessRequestStatus.PENDING:
            raise ConflictError("access_requests.already_decided", status=record.status)
        return record

    async def approve(self, request_id: str, admin_id: str, role: str) -> AccessRequest:
        """Approve and grant *role* to the requester.

        Raises:
            ForbiddenError: ``access_requests.self_decision``, ``rbac.forbidden`` (no
                ``access_requests:review``), ``rbac.escalation`` (the admin may not grant *role*).
            ConflictError: ``access_requests.already_decided``.
            NotFoundError: ``access_requests.not_found``, ``rbac.role_not_found``.
        """
        record = await self._pending_for_decision(request_id, admin_id, "access_requests.approved")
        await self._rbac.ensure_can_grant(admin_id, role)
        now = self._clock.now()
        decided = attrs.evolve(
            record,
            status=AccessRequestStatus.APPROVED.value,
            updated_at=now,
            decided_at=now,
            decided_by=admin_id,
            role=role,
        )
        if not await self._store.decide(decided, expected_status=AccessRequestStatus.PENDING.value):
            raise ConflictError("access_requests.already_decided", status="decided")
        try:
            await self._rbac.assign_role(admin_id, record.user_id, role)
        except ConflictError:
            pass  # the user already holds the role: the request is satisfied
        except BaseException:
            # undo the decision so the request can be decided again
            await self._store.decide(record, expected_status=AccessRequestStatus.APPROVED.value)
            raise
        await self._audit.record(
            admin_id, "access_requests.approved", request_id, AuditOutcome.SUCCESS,
            details={"role": role, "user_id": record.user_id},
        )  # fmt: skip
        log.info("access_requests.approved", request_id=request_id, role=role)
        return _to_request(decided)

    async def reject(self, request_id: str, admin_id: str, reason: str | None = None) -> AccessRequest:
        """Reject the request (with an optional reason shown to the user).

        Raises:
            ForbiddenError: ``access_requests.self_decision``, ``rbac.forbidden``.
            ConflictError: ``access_requests.already_decided``.
            ValidationError: ``access_requests.invalid_reason``.
        """
        clean = _check_reason(reason, required=False)
        record = await self._pending_for_decision(request_id, admin_id, "access_requests.rejected")
        now = self._clock.now()
        decided = attrs.evolve(
            record,
            status=AccessRequestStatus.REJECTED.value,
            updated_at=now,
            decided_at=now,
            decided_by=admin_id,
            decision_reason=clean,
        )
        if not await self._store.decide(decided, expected_status=AccessRequestStatus.PENDING.value):
            raise ConflictError("access_requests.already_decided", status="decided")
        await self._audit.record(
            admin_id, "access_requests.rejected", request_id, AuditOutcome.SUCCESS,
            details={"user_id": record.user_id},
        )  # fmt: skip
        return _to_request(decided)
