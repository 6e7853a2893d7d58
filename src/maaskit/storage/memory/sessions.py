"""In-process :class:`~maaskit.storage.ports.sessions.SessionStore` (tests, single-process apps)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    """Sessions and OAuth states in dictionaries, under one lock (so ``take_state`` is single use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}
        self._states: dict[str, OAuthStateRecord] = {}

    def __repr__(self) -> str:
        return f"MemorySessionStore(sessions={len(self._sessions)}, states={len(self._states)})"

    async def create(self, record: SessionRecord) -> None:
        """Insert a session (data deep-copied)."""
        with self._lock:
            self._sessions[record.digest] = attrs.evolve(record, data=copy.deepcopy(dict(record.data)))

    async def get(self, digest: str) -> SessionRecord | None:
        """The session (a copy of its data) or ``None``."""
        record = self._sessions.get(digest)
        if record is None:
            return None
        return attrs.evolve(record, data=copy.deepcopy(dict(record.data)))

    async def touch(self, digest: str, last_seen_at: datetime, idle_expires_at: datetime) -> bool:
        """Slide the idle expiry."""
        with self._lock:
            record = self._sessions.get(digest)
            if record is None:
                return False
            self._sessions[digest] = attrs.evolve(
                record, last_seen_at=last_seen_at, idle_expires_at=idle_expires_at
            )
            return True

    async def update_data(self, digest: str, data: Mapping[str, Any]) -> bool:
        """Replace the data."""
        with self._lock:
            record = self._sessions.get(digest)
            if record is None:
                return False
            self._sessions[digest] = attrs.evolve(record, data=copy.deepcopy(dict(data)))
            return True

    async def replace(self, old_digest: str, record: SessionRecord) -> bool:
        """Swap the old session for the new one."""
        with self._lock:
            if self._sessions.pop(old_digest, None) is None:
                return False
            self._sessions[record.digest] = attrs.evolve(record, data=copy.deepcopy(dict(record.data)))
            return True

    async def delete(self, digest: str) -> bool:
        """Delete one session."""
        with self._lock:
            return self._sessions.pop(digest, None) is not None

    async def delete_user(self, user_id: str) -> int:
        """Delete a user's sessions."""
        with self._lock:
            doomed = [d for d, r in self._sessions.items() if r.user_id == user_id]
            for digest in doomed:
                del self._sessions[digest]
            return len(doomed)

    async def put_state(self, record: OAuthStateRecord) -> None:
        """Store an OAuth state."""
        with self._lock:
            self._states[record.digest] = record

    async def take_state(self, digest: str, now: datetime) -> OAuthStateRecord | None:
        """Pop the state (single use)."""
        with self._lock:
            record = self._states.pop(digest, None)
        if record is None or record.expires_at <= now:
            return None
        return record

    async def cleanup_expired(self, now: datetime) -> int:
        """Delete expired sessions and states."""
        with self._lock:
            sessions = [d for d, r in self._sessions.items() if r.idle_expires_at <= now]
            states = [d for d, r in self._states.items() if r.expires_at <= now]
            for digest in sessions:
                del self._sessions[digest]
            for digest in states:
                del self._states[digest]
        return len(sessions) + len(states)

    async def ping(self) -> None:
        """Always reachable."""
