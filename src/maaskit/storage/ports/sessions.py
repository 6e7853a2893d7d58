"""Store Protocol behind :mod:`maaskit.services.sessions`: sessions and single-use OAuth states.

Sessions and OAuth states are keyed by the SHA-256 hex digest of their random identifier; the raw
identifier never reaches a store. Every timestamp comes from the service's clock. Backends:
:mod:`maaskit.storage.memory.sessions`, :mod:`maaskit.storage.sql.sessions`,
:mod:`maaskit.storage.redis.sessions`; they pass one contract suite
(``tests/contract/test_session_store.py``). A backend that cannot reach its server raises
``UnavailableError``; it never answers "no such session" for an outage, and never "valid".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["OAuthStateRecord", "SessionRecord", "SessionStore"]


def _copy_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class SessionRecord:
    """One stored session.

    Attributes:
        digest: SHA-256 hex digest of the raw session id (the store key).
        user_id: the session's user.
        data: JSON-serialisable application data.
        created_at: creation (login) time.
        last_seen_at: the last successful validation.
        idle_expires_at: when the session dies without activity (never after ``absolute_expires_at``).
        absolute_expires_at: when the session dies whatever happens.
    """

    digest: str = attrs.field(repr=False)
    user_id: str
    data: Mapping[str, Any] = attrs.field(converter=_copy_mapping, repr=False, hash=False)
    created_at: datetime
    last_seen_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime


@attrs.frozen
class OAuthStateRecord:
    """One pending OAuth ``state``.

    Attributes:
        digest: SHA-256 hex digest of the state value.
        payload: string pairs bound to the state (nonce, PKCE verifier, redirect target...).
        created_at: creation time.
        expires_at: after this the state is refused.
    """

    digest: str = attrs.field(repr=False)
    payload: Mapping[str, str] = attrs.field(converter=_copy_mapping, repr=False, hash=False)
    created_at: datetime
    expires_at: datetime


@runtime_checkable
class SessionStore(Protocol):
    """Persistence for sessions and OAuth states."""

    async def create(self, record: SessionRecord) -> None:
        """Insert a new session (its digest is new)."""
        ...

    async def get(self, digest: str) -> SessionRecord | None:
        """The session or ``None`` (expiry is the service's decision, not the store's)."""
        ...

    async def touch(self, digest: str, last_seen_at: datetime, idle_expires_at: datetime) -> bool:
        """Slide the idle expiry of an existing session; ``False`` when it no longer exists."""
        ...

    async def update_data(self, digest: str, data: Mapping[str, Any]) -> bool:
        """Replace the session data; ``False`` when the session no longer exists."""
        ...

    async def replace(self, old_digest: str, record: SessionRecord) -> bool:
        """Atomically delete *old_digest* and insert *record*; ``False`` (and no change) if it is gone."""
        ...

    async def delete(self, digest: str) -> bool:
        """Delete one session; ``True`` when it existed."""
        ...

    async def delete_user(self, user_id: str) -> int:
        """Delete every session of *user_id*; returns how many."""
        ...

    async def put_state(self, record: OAuthStateRecord) -> None:
        """Store a new OAuth state."""
        ...

    async def take_state(self, digest: str, now: datetime) -> OAuthStateRecord | None:
        """Atomically remove and return the state; ``None`` if unknown, already taken or expired."""
        ...

    async def cleanup_expired(self, now: datetime) -> int:
        """Delete sessions and states expired at *now*; returns how many."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...
