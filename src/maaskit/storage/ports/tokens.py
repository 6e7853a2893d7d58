"""Store Protocol behind :mod:`maaskit.services.tokens`: the ``jti`` deny list and refresh families.

A *refresh family* is the chain of refresh tokens that descend from one login. The store keeps one
row per family: its subject, the ``jti`` of the only refresh token that may still be used
(``current_jti``), when the family expires and whether it was revoked. Rotation is an atomic
compare-and-set on ``current_jti`` (SQL conditional ``UPDATE``, a lock in memory, a Lua script in
Redis), so of two simultaneous uses of one refresh token exactly one wins; the loser is treated as
a reuse and revokes the family.

Backends: :mod:`maaskit.storage.memory.tokens`, :mod:`maaskit.storage.sql.tokens`,
:mod:`maaskit.storage.redis.tokens`. Every timestamp is passed in by the service (from its
:class:`~maaskit.clock.Clock`), so backends never read the time themselves.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["RefreshFamily", "RotateOutcome", "TokenStore"]


class RotateOutcome(enum.Enum):
    """The result of :meth:`TokenStore.rotate_family`."""

    #: The presented ``jti`` was the family's current one; it is now replaced by the new ``jti``.
    ROTATED = "rotated"
    #: The family exists but the presented ``jti`` was already rotated: the family is now revoked.
    REUSED = "reused"
    #: The family was revoked before (logout, reuse, password change).
    REVOKED = "revoked"
    #: No such family, or it has expired.
    UNKNOWN = "unknown"


@attrs.frozen
class RefreshFamily:
    """One refresh-token family.

    Attributes:
        family_id: random id, carried in the refresh tokens' ``fid`` claim.
        subject: the user (``sub``) the family belongs to.
        current_jti: the ``jti`` of the only refresh token of the family that may be used.
        created_at: when the family started (the login).
        expires_at: when the family's newest refresh token expires (the family with it).
        revoked_at: when the family was revoked, else ``None``.
    """

    family_id: str
    subject: str
    current_jti: str = attrs.field(repr=False)
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@runtime_checkable
class TokenStore(Protocol):
    """Persistence for the deny list and the refresh families."""

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Put *jti* on the deny list until *expires_at* (idempotent; a later expiry wins)."""
        ...

    async def is_denied(self, jti: str, now: datetime) -> bool:
        """Whether *jti* is on the deny list and its entry has not expired at *now*."""
        ...

    async def create_family(self, family: RefreshFamily) -> None:
        """Insert a new family (its id is random and new)."""
        ...

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        """The family, revoked or not, or ``None``."""
        ...

    async def rotate_family(
        self, family_id: str, presented_jti: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> RotateOutcome:
        """Atomically replace ``current_jti`` when it equals *presented_jti*.

        When the family exists, is not revoked and has not expired but its ``current_jti`` differs,
        the family is revoked (reuse detection) and :attr:`RotateOutcome.REUSED` is returned.
        """
        ...

    async def set_current(
        self, family_id: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> bool:
        """Make *new_jti* the family's current token unconditionally; ``False`` if revoked/unknown."""
        ...

    async def revoke_family(self, family_id: str, now: datetime) -> bool:
        """Revoke one family; ``True`` when it existed and was not revoked yet."""
        ...

    async def revoke_subject(self, subject: str, now: datetime) -> int:
        """Revoke every live family of *subject*; returns how many were revoked."""
        ...

    async def cleanup_expired(self, now: datetime) -> int:
        """Drop expired deny-list entries and expired families; returns how many rows went."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...
