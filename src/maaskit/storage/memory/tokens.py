"""In-process :class:`~maaskit.storage.ports.tokens.TokenStore` (tests, single-process deployments).

Every operation runs under one ``threading.Lock``, so rotation is an atomic compare-and-set even
when the store is shared between threads (each operation is short and never awaits while holding
the lock).
"""

from __future__ import annotations

import threading
from datetime import datetime

import attrs

from maaskit.storage.ports.tokens import RefreshFamily, RotateOutcome

__all__ = ["MemoryTokenStore"]


class MemoryTokenStore:
    """Deny list and refresh families in dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._denied: dict[str, datetime] = {}
        self._families: dict[str, RefreshFamily] = {}

    def __repr__(self) -> str:
        return f"MemoryTokenStore(denied={len(self._denied)}, families={len(self._families)})"

    async def deny(self, jti: str, expires_at: datetime, now: datetime) -> None:
        """Put *jti* on the deny list until *expires_at*."""
        with self._lock:
            previous = self._denied.get(jti)
            if previous is None or previous < expires_at:
                self._denied[jti] = expires_at

    async def is_denied(self, jti: str, now: datetime) -> bool:
        """Whether *jti* is denied at *now*."""
        expires_at = self._denied.get(jti)
        return expires_at is not None and expires_at > now

    async def create_family(self, family: RefreshFamily) -> None:
        """Insert a new family."""
        with self._lock:
            self._families[family.family_id] = family

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        """The family or ``None``."""
        return self._families.get(family_id)

    async def rotate_family(
        self, family_id: str, presented_jti: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> RotateOutcome:
        """Compare-and-set ``current_jti`` under the lock (see the port)."""
        with self._lock:
            family = self._families.get(family_id)
            if family is None or family.expires_at <= now:
                return RotateOutcome.UNKNOWN
            if family.revoked_at is not None:
                return RotateOutcome.REVOKED
            if family.current_jti != presented_jti:
                self._families[family_id] = attrs.evolve(family, revoked_at=now)
                return RotateOutcome.REUSED
            self._families[family_id] = attrs.evolve(family, current_jti=new_jti, expires_at=new_expires_at)
            return RotateOutcome.ROTATED

    async def set_current(
        self, family_id: str, new_jti: str, new_expires_at: datetime, now: datetime
    ) -> bool:
        """Make *new_jti* current; ``False`` when the family is unknown, expired or revoked."""
        with self._lock:
            family = self._families.get(family_id)
            if family is None or family.revoked_at is not None or family.expires_at <= now:
                return False
            self._families[family_id] = attrs.evolve(
                family, current_jti=new_jti, expires_at=max(family.expires_at, new_expires_at)
            )
            return True

    async def revoke_family(self, family_id: str, now: datetime) -> bool:
        """Revoke one family."""
        with self._lock:
            family = self._families.get(family_id)
            if family is None or family.revoked_at is not None:
                return False
            self._families[family_id] = attrs.evolve(family, revoked_at=now)
            return True

    async def revoke_subject(self, subject: str, now: datetime) -> int:
        """Revoke every live family of *subject*."""
        count = 0
        with self._lock:
            for family_id, family in list(self._families.items()):
                if family.subject == subject and family.revoked_at is None:
                    self._families[family_id] = attrs.evolve(family, revoked_at=now)
                    count += 1
        return count

    async def cleanup_expired(self, now: datetime) -> int:
        """Drop expired entries."""
        with self._lock:
            dead_jtis = [jti for jti, exp in self._denied.items() if exp <= now]
            dead_families = [fid for fid, fam in self._families.items() if fam.expires_at <= now]
            for jti in dead_jtis:
                del self._denied[jti]
            for fid in dead_families:
                del self._families[fid]
        return len(dead_jtis) + len(dead_families)

    async def ping(self) -> None:
        """Always reachable."""
