"""The audit log: an append-only record of sensitive actions.

Example::

    from maaskit.services.audit import DefaultAuditLog
    from maaskit.storage.memory.audit import MemoryAuditStore

    audit = DefaultAuditLog(MemoryAuditStore())
    await audit.record("usr_admin", "rbac.role_assigned", "usr_bob", "success", details={"role": "member"})
    events = await audit.query(target="usr_bob")

The log never holds a secret. Before an event is stored, :func:`scrub_details` redacts every detail
whose *name* suggests a secret (``password``, ``secret``, ``token``, ``api_key``, ``cookie``...) and
every *value* that looks like one (maaskit keys ``mk_...``, JWTs, bearer credentials, ``sk-...``
provider keys, argon2 hashes, PEM private keys), including inside ``actor`` and ``target``.
There is no update or delete API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

import attrs
import structlog

from maaskit.clock import Clock, SystemClock, to_utc
from maaskit.errors import ValidationError
from maaskit.storage.ports.audit import AuditQuery, AuditStore, StoredAuditEvent

__all__ = [
    "MAX_QUERY_LIMIT",
    "REDACTED",
    "AuditEvent",
    "AuditLog",
    "AuditOutcome",
    "DefaultAuditLog",
    "DetailValue",
    "is_sensitive_name",
    "scrub_details",
    "scrub_text",
]

log = structlog.get_logger(__name__)

#: What replaces a secret-looking value.
REDACTED = "[REDACTED]"
#: The largest ``limit`` :meth:`AuditLog.query` accepts.
MAX_QUERY_LIMIT = 1000

#: A detail value: only plain scalars are accepted.
DetailValue = str | int | bool

_MAX_DETAILS = 32
_MAX_NAME = 64
_MAX_VALUE = 1024
_MAX_FIELD = 256
_ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_DETAIL_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

_SENSITIVE_NAME_RE = re.compile(
    r"pass(word|wd|phrase)?|pwd|secret|token|credential|cookie|authorization|bearer|session|"
    r"private|digest|hash|otp|api_?key|(^|[_.-])key$|^key",
    re.IGNORECASE,
)
_SAFE_NAMES = frozenset({"key_id", "api_key_id", "token_id", "jti", "session_count"})

_SECRET_VALUE_RES = (
    re.compile(r"mk_[A-Za-z0-9_-]{6,}"),  # maaskit API keys
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),  # JWT / JWS compact
    re.compile(r"(?i)bearer\s+\S+"),
    re.compile(r"(?i)basic\s+[A-Za-z0-9+/=]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"),  # OpenAI-style provider keys
    re.compile(r"\$argon2(id|i|d)\$\S+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)


class AuditOutcome(StrEnum):
    """How a recorded action ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


@attrs.frozen
class AuditEvent:
    """One recorded action.

    Attributes:
        id: strictly increasing sequence number assigned by the store.
        created_at: when it happened (from the injected clock).
        actor: who acted: a user id, ``"system"`` or ``"anonymous"``.
        action: dotted name such as ``"users.password_changed"``.
        target: what it happened to.
        outcome: :class:`AuditOutcome`.
        details: non-secret key/value pairs (secrets already redacted).
    """

    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    outcome: AuditOutcome
    details: Mapping[str, DetailValue] = attrs.field(factory=dict, hash=False)


def is_sensitive_name(name: str) -> bool:
    """Whether a detail called *name* may hold a secret (its value is then always redacted)."""
    if name.lower() in _SAFE_NAMES:
        return False
    return _SENSITIVE_NAME_RE.search(name) is not None


def scrub_text(value: str) -> str:
    """*value* with every secret-looking part (``mk_`` keys, JWTs, bearer values...) replaced."""
    for pattern in _SECRET_VALUE_RES:
        value = pattern.sub(REDACTED, value)
    return value


def scrub_details(details: Mapping[str, object] | None) -> dict[str, DetailValue]:
    """Validate and filter audit *details*; secrets are replaced by :data:`REDACTED`.

    Raises:
        ValidationError: ``audit.invalid_details`` for too many entries, a bad name, a value that is
            not ``str``/``int``/``bool`` or a string longer than 1,024 characters.
    """
    if not details:
        return {}
    if len(details) > _MAX_DETAILS:
        raise ValidationError("audit.invalid_details", reason=f"more than {_MAX_DETAILS} entries")
    clean: dict[str, DetailValue] = {}
    for name, value in details.items():
        if not isinstance(name, str) or not _DETAIL_NAME_RE.match(name) or len(name) > _MAX_NAME:
            raise ValidationError("audit.invalid_details", reason="a detail name is not a short identifier")
        if not isinstance(value, str | int | bool):
            raise ValidationError("audit.invalid_details", reason=f"detail {name} is not a str, int or bool")
        if is_sensitive_name(name):
            clean[name] = REDACTED
            continue
        if isinstance(value, str):
            if len(value) > _MAX_VALUE:
                raise ValidationError("audit.invalid_details", reason=f"detail {name} is too long")
            value = scrub_text(value)
        clean[name] = value
    return clean


def _field(name: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise ValidationError("audit.invalid_field", field=name)
    return scrub_text(value)


@runtime_checkable
class AuditLog(Protocol):
    """Append-only record of sensitive actions."""

    async def record(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: AuditOutcome | str,
        *,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        """Append one event; secrets in *details* (and in actor/target) are redacted first."""
        ...

    async def query(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first (``since`` inclusive, ``until`` exclusive)."""
        ...


class DefaultAuditLog:
    """The :class:`AuditLog` over an :class:`~maaskit.storage.ports.audit.AuditStore`.

    Args:
        store: where events are appended.
        clock: the time source (defaults to the system clock).
    """

    def __init__(self, store: AuditStore, clock: Clock | None = None) -> None:
        self._store = store
        self._clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"DefaultAuditLog({type(self._store).__name__})"

    async def record(
        self,
        actor: str,
        action: str,
        target: str,
        outcome: AuditOutcome | str,
        *,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        """Append one event; see :meth:`AuditLog.record`.

        Raises:
            ValidationError: ``audit.invalid_action`` (not a dotted lower-case name),
                ``audit.invalid_outcome``, ``audit.invalid_field`` (empty or longer than 256
                characters) or ``audit.invalid_details``.
        """
        if not isinstance(action, str) or len(action) > 128 or not _ACTION_RE.match(action):
            raise ValidationError("audit.invalid_action")
        try:
            result = AuditOutcome(outcome)
        except ValueError:
            raise ValidationError("audit.invalid_outcome", outcome=str(outcome)[:32]) from None
        event = StoredAuditEvent(
            id=0,
            created_at=self._clock.now(),
            actor=_field("actor", actor),
            action=action,
            target=_field("target", target),
            outcome=result.value,
            details=scrub_details(details),
        )
        stored = await self._store.append(event)
        log.info("audit", audit_action=action, outcome=result.value, audit_id=stored.id)
        return _to_event(stored)

    async def query(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events matching every given filter; see :meth:`AuditLog.query`.

        Raises:
            ValidationError: ``audit.invalid_limit`` (outside 1..1000) or ``audit.invalid_range``
                (a naive datetime, or ``since`` after ``until``).
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValidationError("audit.invalid_limit", limit=str(limit)[:16], max=MAX_QUERY_LIMIT)
        for bound in (since, until):
            if bound is not None:
                try:
                    to_utc(bound)  # aware, and within what UTC datetimes hold
                except ValueError:
                    raise ValidationError("audit.invalid_range") from None
        if since is not None and until is not None and since > until:
            raise ValidationError("audit.invalid_range")
        rows = await self._store.query(
            AuditQuery(actor=actor, target=target, action=action, since=since, until=until, limit=limit)
        )
        return [_to_event(row) for row in rows]


def _to_event(row: StoredAuditEvent) -> AuditEvent:
    return AuditEvent(
        id=row.id,
        created_at=row.created_at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=AuditOutcome(row.outcome),
        details=dict(row.details),
    )
