"""In-process :class:`~maaskit.storage.ports.users.UserStore` (tests, single process)."""

from __future__ import annotations

import builtins
from collections.abc import Collection

import attrs

from maaskit.storage.ports.users import UserRecord

__all__ = ["MemoryUserStore"]


class MemoryUserStore:
    """Users in a dictionary, with a username index."""

    def __init__(self) -> None:
        self._users: dict[str, UserRecord] = {}
        self._by_name: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"MemoryUserStore(users={len(self._users)})"

    async def insert(self, user: UserRecord) -> bool:
        """Store a new user unless the id or normalised username is taken."""
        if user.id in self._users or user.username_normalized in self._by_name:
            return False
        self._users[user.id] = user
        self._by_name[user.username_normalized] = user.id
        return True

    async def get(self, user_id: str) -> UserRecord | None:
        """The user, or ``None``."""
        return self._users.get(user_id)

    async def get_by_username(self, username_normalized: str) -> UserRecord | None:
        """The user with that normalised username, or ``None``."""
        user_id = self._by_name.get(username_normalized)
        return self._users.get(user_id) if user_id is not None else None

    async def get_many(self, user_ids: Collection[str]) -> builtins.list[UserRecord]:
        """The existing users among *user_ids*."""
        return [self._users[uid] for uid in set(user_ids) if uid in self._users]

    async def list(
        self, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[UserRecord]:
        """Users ordered by normalised username."""
        result: builtins.list[UserRecord] = []
        for name in sorted(self._by_name):
            if after is not None and name <= after:
                continue
            user = self._users[self._by_name[name]]
            if enabled is not None and user.enabled != enabled:
                continue
            result.append(user)
            if len(result) >= limit:
                break
        return result

    async def find_protected(self) -> UserRecord | None:
        """The protected default admin, if any."""
        return next((u for u in self._users.values() if u.protected), None)

    async def update(self, user: UserRecord) -> bool:
        """Replace the user with the same id (the username cannot change)."""
        current = self._users.get(user.id)
        if current is None:
            return False
        self._users[user.id] = attrs.evolve(
            user, username=current.username, username_normalized=current.username_normalized
        )
        return True

    async def delete(self, user_id: str) -> bool:
        """Delete the user."""
        user = self._users.pop(user_id, None)
        if user is None:
            return False
        self._by_name.pop(user.username_normalized, None)
        return True
