"""Store Protocol behind :mod:`maaskit.services.users`.

Stores hold :class:`UserRecord` objects, including the argon2id password hash (never the password).
Usernames are unique by their normalised (lower-case) form.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["UserRecord", "UserStore"]


@attrs.frozen
class UserRecord:
    """One stored user.

    Attributes:
        id: stable user id (``usr_...``).
        username: the name as the user chose it.
        username_normalized: the unique, case-insensitive lookup form.
        password_hash: argon2id PHC string (hidden from ``repr``).
        email: optional e-mail address.
        display_name: optional human name.
        enabled: ``False`` while the account is disabled.
        protected: ``True`` for the default admin (cannot be deleted, disabled or demoted).
        created_at: creation time.
        updated_at: last change.
        password_changed_at: last password change.
    """

    id: str
    username: str
    username_normalized: str
    password_hash: str = attrs.field(repr=False)
    email: str | None
    display_name: str | None
    enabled: bool
    protected: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime


@runtime_checkable
class UserStore(Protocol):
    """Users by id and by normalised username."""

    async def insert(self, user: UserRecord) -> bool:
        """Store a new user; ``False`` (nothing written) when the id or normalised username is taken."""
        ...

    async def get(self, user_id: str) -> UserRecord | None:
        """The user with *user_id*, or ``None``."""
        ...

    async def get_by_username(self, username_normalized: str) -> UserRecord | None:
        """The user with that normalised username, or ``None``."""
        ...

    async def get_many(self, user_ids: Collection[str]) -> builtins.list[UserRecord]:
        """The users among *user_ids* that exist (any order)."""
        ...

    async def list(
        self, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[UserRecord]:
        """Users ordered by normalised username, starting after the normalised name *after*."""
        ...

    async def find_protected(self) -> UserRecord | None:
        """The protected default admin, if one exists."""
        ...

    async def update(self, user: UserRecord) -> bool:
        """Replace the stored user with the same id (username is immutable); ``False`` when missing."""
        ...

    async def delete(self, user_id: str) -> bool:
        """Delete the user (and, in SQL, its role assignments); ``False`` when missing."""
        ...
