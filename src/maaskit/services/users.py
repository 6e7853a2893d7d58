"""Users: accounts, argon2id passwords, login with throttling, the protected default admin.

Example::

    from maaskit.services.users import DefaultUserService

    users = DefaultUserService(user_store, rbac, audit_log, revokers=[sessions, tokens, api_keys])
    admin, generated = await users.ensure_default_admin(None)   # print `generated` once, then forget it
    bob = await users.add("bob", "correct horse battery", roles=["member"], actor_id=admin.id)
    user = await users.authenticate("Bob", "correct horse battery", client_ip="203.0.113.7")

Passwords are hashed with argon2id through ``argon2-cffi``'s default profile (t=3, 64 MiB, p=4);
pass ``hasher=argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)`` only in tests. A hash
made with older parameters is re-hashed on the next successful login.

:meth:`UserService.authenticate` gives one error, ``UnauthenticatedError("users.invalid_credentials")``,
and does the same argon2 work for an unknown user, a wrong password and a disabled account (an
unknown user is verified against a dummy hash computed once). Attempts are throttled per account and
per client IP (:mod:`maaskit.services.login_throttle`); pass as ``client_ip`` only the peer address or
one reported by a *trusted* proxy, never a raw ``X-Forwarded-For`` header.

Changing or resetting a password, disabling and deleting a user revoke the user's sessions, refresh
tokens and API keys through the injected :class:`CredentialRevoker` objects. Deleting revokes
*before* anything is deleted: if a revocation fails the account stays as it was (its keys keep acting
with its own permissions) and the call can be retried.

Password size limits apply to the NFKC-normalised text, at creation and at login alike, so every
password that was accepted can be typed in again.

The default admin is *protected*: it cannot be deleted, disabled or lose the admin role
(``ForbiddenError("users.protected")``), and no operation may remove, disable or demote the last
enabled admin (``ConflictError("users.last_admin")``).

Administrative methods take an optional ``actor_id``. With it, the actor must hold ``users:manage``
and every permission the target user is assigned — in any scope, and even while the target is
disabled (a team admin cannot reset an admin's password, nor a disabled admin's and then enable it);
without it the call is trusted code (bootstrap, CLI) — HTTP adapters must always pass the signed-in
user. The gateway's key routes apply the same rule to a user's API keys
(:meth:`maaskit.services.auth.Authenticator.require_covers`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
import secrets
import unicodedata
from collections.abc import Collection, Sequence
from datetime import datetime
from enum import Enum
from typing import Final, Protocol, runtime_checkable

import argon2
import attrs
import structlog
from argon2.exceptions import InvalidHashError, VerificationError

from maaskit.clock import Clock, SystemClock
from maaskit.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from maaskit.services.audit import AuditLog, AuditOutcome
from maaskit.services.login_throttle import LoginThrottle, MemoryLoginThrottle
from maaskit.services.rbac import ADMIN_ROLE, SYSTEM_ACTOR, RbacService, assigned_permissions, covers
from maaskit.storage.ports.users import UserRecord, UserStore

__all__ = [
    "COMMON_PASSWORDS",
    "MAX_PASSWORD_BYTES",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "UNSET",
    "CredentialRevoker",
    "DefaultUserService",
    "User",
    "UserService",
    "normalize_username",
    "validate_password",
]

log = structlog.get_logger(__name__)

MIN_PASSWORD_LENGTH: Final = 8
MAX_PASSWORD_LENGTH: Final = 128
MAX_PASSWORD_BYTES: Final = 1024

#: A small deny list of the most common passwords of at least 8 characters (compared case-insensitively).
COMMON_PASSWORDS: Final[frozenset[str]] = frozenset(
    """
    password password1 password12 password123 password! passw0rd p@ssw0rd p@ssword passwort
    12345678 123456789 1234567890 12341234 87654321 987654321 11111111 00000000 88888888 123123123
    11223344 12344321 123456789a 12345678a 1234abcd abcd1234 a1b2c3d4 1q2w3e4r 1q2w3e4r5t 1qaz2wsx
    zaq12wsx q1w2e3r4 q1w2e3r4t5 qwertyui qwertyuiop qwerty123 qwerty1234 1234qwer 123qweasd
    qweasdzxc qazwsxedc asdfghjk asdfghjkl zxcvbnm1 zxcvbnm123 aaaaaaaa abcdefgh abc12345
    iloveyou iloveyou1 sunshine sunshine1 princess princess1 football football1 baseball baseball1
    welcome1 welcome123 letmein1 letmein123 trustno1 superman batman123 starwars whatever whatever1
    dragon123 master123 monkey123 shadow123 michael1 jennifer computer internet changeme changeme1
    changeme123 default1 secret123 admin123 admin1234 administrator test1234 testtest guest123
    root1234 toor1234 hello123 hello1234 loveyou1 charlie1 freedom1 mustang1 jordan23 liverpool
    chelsea1 arsenal1 pokemon1 minecraft samsung1 google123 linkedin facebook hallo123 schalke04
    maaskit1 maaskit123 letmeinnow
    """.split()  # noqa: SIM905 - one word list reads better than 110 quoted strings
)

# always used with fullmatch(): "$" would also match before a trailing newline
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{2,63}")
_EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
#: Longest raw password text (characters) normalised at all; a DoS bound only, far above what the
#: NFKC limits below let through.
_MAX_RAW_PASSWORD: Final = 4 * MAX_PASSWORD_BYTES
_MAX_EMAIL = 254
_MAX_DISPLAY_NAME = 128
_MAX_LIST = 1000


class _Unset(Enum):
    UNSET = "UNSET"


#: Marker for "leave this field unchanged" in :meth:`UserService.update`.
UNSET: Final = _Unset.UNSET


@attrs.frozen
class User:
    """A user account as callers see it (no password hash).

    Attributes:
        id: stable id (``usr_...``).
        username: the chosen name (unique case-insensitively).
        email: optional e-mail address.
        display_name: optional human name.
        enabled: ``False`` while disabled.
        protected: ``True`` for the default admin.
        created_at: creation time.
        updated_at: last change.
        password_changed_at: last password change.
    """

    id: str
    username: str
    email: str | None
    display_name: str | None
    enabled: bool
    protected: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime


@runtime_checkable
class CredentialRevoker(Protocol):
    """Something holding credentials of a user (sessions, refresh tokens, API keys)."""

    async def revoke_user_credentials(self, user_id: str) -> None:
        """Revoke every credential of *user_id*; must be idempotent."""
        ...


@runtime_checkable
class UserService(Protocol):
    """User accounts and password login."""

    async def add(
        self,
        username: str,
        password: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        roles: Collection[str] = (),
        actor_id: str | None = None,
    ) -> User:
        """Create a user (and grant *roles*)."""
        ...

    async def get(self, user_id: str) -> User:
        """One user by id."""
        ...

    async def get_by_username(self, username: str) -> User:
        """One user by username (case-insensitive)."""
        ...

    async def list(
        self, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[User]:
        """Users sorted by username; page with ``after=<last username>``."""
        ...

    async def update(
        self,
        user_id: str,
        *,
        email: str | _Unset | None = UNSET,
        display_name: str | _Unset | None = UNSET,
        actor_id: str | None = None,
    ) -> User:
        """Change profile fields (``UNSET`` keeps, ``None`` clears)."""
        ...

    async def change_password(self, user_id: str, old_password: str, new_password: str) -> None:
        """The user changes their own password (the old one is required)."""
        ...

    async def set_password(self, user_id: str, new_password: str, *, actor_id: str | None = None) -> None:
        """An administrator sets a new password."""
        ...

    async def disable(self, user_id: str, *, actor_id: str | None = None) -> User:
        """Disable the account and revoke its credentials."""
        ...

    async def enable(self, user_id: str, *, actor_id: str | None = None) -> User:
        """Enable the account again."""
        ...

    async def delete(self, user_id: str, *, actor_id: str | None = None) -> None:
        """Delete the account, its roles and its credentials."""
        ...

    async def authenticate(self, username: str, password: str, *, client_ip: str | None = None) -> User:
        """Check a username and password; the user on success."""
        ...

    async def ensure_default_admin(
        self, password: str | None = None, *, username: str = "admin"
    ) -> tuple[User, str | None]:
        """Create the protected default admin if missing; returns a generated password once."""
        ...


def normalize_username(username: str) -> str:
    """The unique lookup form of *username* (validated, lower-case).

    Raises:
        ValidationError: ``users.invalid_username``.
    """
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise ValidationError(
            "users.invalid_username", reason="3..64 characters: letters, digits and . _ @ + - (not first)"
        )
    return username.lower()


def _prepare(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def _prepare_bounded(password: object) -> str:
    """The NFKC form of *password* if it is within the size limits (the one rule of creation and login).

    Raises:
        ValidationError: ``users.invalid_password`` (the reason never contains the password).
    """
    if not isinstance(password, str):
        raise ValidationError("users.invalid_password", reason="not a string")
    if len(password) > _MAX_RAW_PASSWORD:
        raise ValidationError(
            "users.invalid_password", reason=f"longer than {MAX_PASSWORD_LENGTH} characters"
        )
    prepared = _prepare(password)
    if len(prepared) > MAX_PASSWORD_LENGTH:
        raise ValidationError(
            "users.invalid_password", reason=f"longer than {MAX_PASSWORD_LENGTH} characters"
        )
    try:
        size = len(prepared.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("users.invalid_password", reason="not valid Unicode text") from None
    if size > MAX_PASSWORD_BYTES:
        raise ValidationError("users.invalid_password", reason=f"longer than {MAX_PASSWORD_BYTES} bytes")
    return prepared


def _login_candidate(password: object) -> str | None:
    """What a login verifies: the NFKC form under the same size limits as creation, else ``None``."""
    try:
        return _prepare_bounded(password)
    except ValidationError:
        return None


def validate_password(password: str, *, username: str | None = None) -> str:
    """Check the password policy; returns the NFKC-normalised password that is hashed.

    8..128 characters, at most 1 KiB of UTF-8, not in :data:`COMMON_PASSWORDS`, not the username.
    The length limits apply to the NFKC-normalised text, at creation and at login alike.

    Raises:
        ValidationError: ``users.invalid_password`` (with a reason that never contains the password) or
            ``users.password_too_common``.
    """
    prepared = _prepare_bounded(password)
    if len(prepared) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            "users.invalid_password", reason=f"shorter than {MIN_PASSWORD_LENGTH} characters"
        )
    folded = prepared.casefold()
    if folded in COMMON_PASSWORDS:
        raise ValidationError("users.password_too_common")
    if username is not None and folded == username.casefold():
        raise ValidationError("users.invalid_password", reason="it equals the username")
    return prepared


def _check_email(email: str | None) -> str | None:
    if email is None:
        return None
    if not isinstance(email, str) or len(email) > _MAX_EMAIL or not _EMAIL_RE.fullmatch(email):
        raise ValidationError("users.invalid_email")
    return email


def _check_display_name(name: str | None) -> str | None:
    if name is None:
        return None
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > _MAX_DISPLAY_NAME
        or any(unicodedata.category(ch) == "Cc" for ch in name)
    ):
        raise ValidationError("users.invalid_display_name", max=_MAX_DISPLAY_NAME)
    return name


def _to_user(record: UserRecord) -> User:
    return User(
        id=record.id,
        username=record.username,
        email=record.email,
        display_name=record.display_name,
        enabled=record.enabled,
        protected=record.protected,
        created_at=record.created_at,
        updated_at=record.updated_at,
        password_changed_at=record.password_changed_at,
    )


def _throttle_account(username: object) -> str:
    if not isinstance(username, str):
        return "?"
    return username.strip().lower()[:128]


class DefaultUserService:
    """The :class:`UserService` over a :class:`~maaskit.storage.ports.users.UserStore`.

    Args:
        store: where users live.
        rbac: roles (assigning roles at creation, admin protection, authorising admin actions).
        audit: where every change and every login is recorded.
        clock: time source.
        hasher: the argon2 hasher; defaults to ``argon2.PasswordHasher()`` (argon2id, t=3, 64 MiB,
            p=4). Pass a cheaper one only in tests.
        throttle: login throttling; defaults to a :class:`MemoryLoginThrottle` on *clock*.
        revokers: called with the user id whenever a password changes or a user is disabled or
            deleted (sessions, refresh tokens, API keys).
    """

    def __init__(
        self,
        store: UserStore,
        rbac: RbacService,
        audit: AuditLog,
        clock: Clock | None = None,
        *,
        hasher: argon2.PasswordHasher | None = None,
        throttle: LoginThrottle | None = None,
        revokers: Sequence[CredentialRevoker] = (),
    ) -> None:
        self._store = store
        self._rbac = rbac
        self._audit = audit
        self._clock = clock or SystemClock()
        self._hasher = hasher or argon2.PasswordHasher()
        if self._hasher.type is not argon2.Type.ID:
            raise ValidationError("config.invalid", setting="hasher", reason="passwords must use argon2id")
        self._throttle = throttle or MemoryLoginThrottle(self._clock)
        self._revokers = tuple(revokers)
        self._dummy_hash: str | None = None
        self._dummy_lock = asyncio.Lock()

    def __repr__(self) -> str:
        p = self._hasher
        return f"DefaultUserService(argon2id t={p.time_cost} m={p.memory_cost} p={p.parallelism})"

    # -- hashing --------------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify_sync(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    async def _verify(self, stored_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._verify_sync, stored_hash, password)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            async with self._dummy_lock:
                if self._dummy_hash is None:
                    self._dummy_hash = await self._hash(secrets.token_urlsafe(24))
        return self._dummy_hash

    # -- helpers --------------------------------------------------------------------------------

    async def _record(self, user_id: str) -> UserRecord:
        if not isinstance(user_id, str):
            raise NotFoundError("users.not_found", user_id="?")
        record = await self._store.get(user_id)
        if record is None:
            raise NotFoundError("users.not_found", user_id=user_id[:64])
        return record

    async def _authorize(self, actor_id: str | None, target_id: str, action: str) -> str:
        """Check that *actor_id* may administer *target_id*; returns the actor for the audit log."""
        if actor_id is None:
            return SYSTEM_ACTOR
        actor = await self._rbac.permissions_for(actor_id)
        if not actor.allows("users:manage"):
            await self._audit.record(
                actor_id, action, target_id, AuditOutcome.DENIED, details={"reason": "rbac.forbidden"}
            )
            raise ForbiddenError("rbac.forbidden", permission="users:manage")
        if actor_id != target_id:
            # what the target is assigned, in any scope and even while disabled (an actor must not
            # reset the password of a disabled admin, then enable it)
            target = await assigned_permissions(self._rbac, target_id)
            if not covers(actor.permissions, target):
                await self._audit.record(
                    actor_id,
                    action,
                    target_id,
                    AuditOutcome.DENIED,
                    details={"reason": "users.forbidden_target"},
                )
                raise ForbiddenError("users.forbidden_target")
        return actor_id

    async def _revoke(self, user_id: str, reason: str) -> None:
        failed = 0
        for revoker in self._revokers:
            try:
                await revoker.revoke_user_credentials(user_id)
            except Exception as exc:  # every revoker must run even if one fails
                failed += 1
                log.error(
                    "users.revocation_failed",
                    revoker=type(revoker).__name__,
                    error=type(exc).__name__,
                    why=reason,
                )
        if failed:
            raise UnavailableError("users.revocation_incomplete", user_id=user_id, failed=failed)

    async def _reserve(self, account: str, client_ip: str | None) -> bool:
        """Count the attempt as a failure before the password is checked (atomic check-and-count).

        ``False`` for a throttle written before ``reserve``/``release`` existed: it is only asked
        (``check``) and told about a failure afterwards, as before.
        """
        reserve = getattr(self._throttle, "reserve", None)
        if reserve is None or getattr(self._throttle, "release", None) is None:
            await self._throttle.check(account, client_ip)
            return False
        await reserve(account, client_ip)
        return True

    async def _failed(self, account: str, client_ip: str | None, reserved: bool) -> None:
        if not reserved:
            await self._throttle.record_failure(account, client_ip)

    async def _succeeded(self, account: str, client_ip: str | None, reserved: bool) -> None:
        """The password was right: take the reserved attempt back and clear the account's failures."""
        if reserved:
            await self._throttle.release(account, client_ip)
        await self._throttle.record_success(account, client_ip)

    async def _save(self, record: UserRecord) -> None:
        if not await self._store.update(record):
            raise NotFoundError("users.not_found", user_id=record.id)

    # -- CRUD -----------------------------------------------------------------------------------

    async def add(
        self,
        username: str,
        password: str,
        *,
        email: str | None = None,
        display_name: str | None = None,
        roles: Collection[str] = (),
        actor_id: str | None = None,
    ) -> User:
        """Create a user and grant *roles* (through the no-escalation check when *actor_id* is given).

        Raises:
            ValidationError: ``users.invalid_username``, ``users.invalid_password``,
                ``users.password_too_common``, ``users.invalid_email``, ``users.invalid_display_name``.
            ConflictError: ``users.username_taken``.
            ForbiddenError: ``rbac.forbidden`` / ``rbac.escalation`` when *actor_id* may not do this.
            NotFoundError: ``rbac.role_not_found``.
        """
        normalized = normalize_username(username)
        prepared = validate_password(password, username=username)
        email = _check_email(email)
        display_name = _check_display_name(display_name)
        role_list = sorted(set([roles] if isinstance(roles, str) else roles))
        actor = SYSTEM_ACTOR
        if actor_id is not None:
            if not await self._rbac.check_permission(actor_id, "users:manage"):
                raise ForbiddenError("rbac.forbidden", permission="users:manage")
            actor = actor_id
        for role in role_list:
            if actor_id is not None:
                await self._rbac.ensure_can_grant(actor_id, role)
            else:
                await self._rbac.role_permissions(role)  # NotFoundError for an unknown role
        if await self._store.get_by_username(normalized) is not None:
            raise ConflictError("users.username_taken", username=username)
        now = self._clock.now()
        record = UserRecord(
            id=f"usr_{secrets.token_hex(12)}",
            username=username,
            username_normalized=normalized,
            password_hash=await self._hash(prepared),
            email=email,
            display_name=display_name,
            enabled=True,
            protected=False,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        if not await self._store.insert(record):
            raise ConflictError("users.username_taken", username=username)
        try:
            for role in role_list:
                if actor_id is not None:
                    await self._rbac.assign_role(actor_id, record.id, role)
                else:
                    await self._rbac.grant_role_as_system(record.id, role)
        except BaseException:
            await self._rbac.remove_all_roles(record.id, actor_id=actor)
            await self._store.delete(record.id)
            raise
        await self._audit.record(
            actor, "users.created", record.id, AuditOutcome.SUCCESS, details={"roles": ",".join(role_list)}
        )
        log.info("users.created", user_id=record.id)
        return _to_user(record)

    async def get(self, user_id: str) -> User:
        """One user; ``NotFoundError("users.not_found")`` when unknown."""
        return _to_user(await self._record(user_id))

    async def get_by_username(self, username: str) -> User:
        """One user by username (case-insensitive); ``users.not_found`` when unknown."""
        try:
            normalized = normalize_username(username)
        except ValidationError:
            raise NotFoundError("users.not_found", user_id="?") from None
        record = await self._store.get_by_username(normalized)
        if record is None:
            raise NotFoundError("users.not_found", user_id="?")
        return _to_user(record)

    async def list(
        self, *, enabled: bool | None = None, after: str | None = None, limit: int = 100
    ) -> builtins.list[User]:
        """Users sorted by normalised username; ``limit`` 1..1000."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST:
            raise ValidationError("users.invalid_limit", max=_MAX_LIST)
        records = await self._store.list(
            enabled=enabled, after=after.lower() if isinstance(after, str) else None, limit=limit
        )
        return [_to_user(r) for r in records]

    async def update(
        self,
        user_id: str,
        *,
        email: str | _Unset | None = UNSET,
        display_name: str | _Unset | None = UNSET,
        actor_id: str | None = None,
    ) -> User:
        """Change e-mail and/or display name (``UNSET`` keeps a field, ``None`` clears it)."""
        record = await self._record(user_id)
        actor = await self._authorize(actor_id, user_id, "users.updated")
        changes: dict[str, str | None] = {}
        if email is not UNSET:
            changes["email"] = _check_email(email)
        if display_name is not UNSET:
            changes["display_name"] = _check_display_name(display_name)
        if not changes:
            return _to_user(record)
        record = attrs.evolve(record, updated_at=self._clock.now(), **changes)  # type: ignore[arg-type]
        await self._save(record)
        await self._audit.record(
            actor,
            "users.updated",
            user_id,
            AuditOutcome.SUCCESS,
            details={"fields": ",".join(sorted(changes))},
        )
        return _to_user(record)

    # -- passwords ------------------------------------------------------------------------------

    async def change_password(self, user_id: str, old_password: str, new_password: str) -> None:
        """Change one's own password; then every credential of the user is revoked.

        Throttled like a login (a wrong old password counts as a failed login).

        Raises:
            UnauthenticatedError: ``users.invalid_credentials`` for a wrong old password.
            RateLimitedError: ``users.login_throttled``.
            ValidationError: the password policy, or ``users.password_unchanged``.
        """
        record = await self._record(user_id)
        account = record.username_normalized
        reserved = await self._reserve(account, None)
        old = _login_candidate(old_password)
        ok = old is not None and await self._verify(record.password_hash, old)
        if not ok or not record.enabled:
            await self._failed(account, None, reserved)
            await self._audit.record(user_id, "users.password_changed", user_id, AuditOutcome.FAILURE)
            raise UnauthenticatedError("users.invalid_credentials")
        await self._succeeded(account, None, reserved)
        prepared = validate_password(new_password, username=record.username)
        if prepared == old:
            raise ValidationError("users.password_unchanged")
        await self._store_password(record, prepared, actor=user_id)

    async def set_password(self, user_id: str, new_password: str, *, actor_id: str | None = None) -> None:
        """Set a user's password as an administrator; every credential of the user is revoked.

        Raises:
            ForbiddenError: ``rbac.forbidden`` / ``users.forbidden_target`` (the actor does not hold
                every permission of the target).
            ValidationError: the password policy.
        """
        record = await self._record(user_id)
        actor = await self._authorize(actor_id, user_id, "users.password_set")
        prepared = validate_password(new_password, username=record.username)
        await self._store_password(record, prepared, actor=actor, action="users.password_set")

    async def _store_password(
        self, record: UserRecord, prepared: str, *, actor: str, action: str = "users.password_changed"
    ) -> None:
        now = self._clock.now()
        updated = attrs.evolve(
            record, password_hash=await self._hash(prepared), updated_at=now, password_changed_at=now
        )
        await self._save(updated)
        await self._audit.record(actor, action, record.id, AuditOutcome.SUCCESS)
        await self._revoke(record.id, action)

    # -- state ----------------------------------------------------------------------------------

    async def disable(self, user_id: str, *, actor_id: str | None = None) -> User:
        """Disable the account and revoke its credentials (idempotent: revokes again).

        Raises:
            ForbiddenError: ``users.protected`` for the default admin; authorisation errors.
            ConflictError: ``users.last_admin``.
        """
        record = await self._record(user_id)
        actor = await self._authorize(actor_id, user_id, "users.disabled")
        if record.protected:
            await self._audit.record(
                actor, "users.disabled", user_id, AuditOutcome.DENIED, details={"reason": "users.protected"}
            )
            raise ForbiddenError("users.protected")
        if record.enabled:
            await self._rbac.ensure_not_last_admin(user_id)
            record = attrs.evolve(record, enabled=False, updated_at=self._clock.now())
            await self._save(record)
            self._rbac.invalidate(user_id)
            await self._audit.record(actor, "users.disabled", user_id, AuditOutcome.SUCCESS)
        await self._revoke(user_id, "users.disabled")
        return _to_user(record)

    async def enable(self, user_id: str, *, actor_id: str | None = None) -> User:
        """Enable a disabled account."""
        record = await self._record(user_id)
        actor = await self._authorize(actor_id, user_id, "users.enabled")
        if not record.enabled:
            record = attrs.evolve(record, enabled=True, updated_at=self._clock.now())
            await self._save(record)
            self._rbac.invalidate(user_id)
            await self._audit.record(actor, "users.enabled", user_id, AuditOutcome.SUCCESS)
        return _to_user(record)

    async def delete(self, user_id: str, *, actor_id: str | None = None) -> None:
        """Revoke the account's credentials, then delete it with its role assignments.

        Raises:
            UnavailableError: ``users.revocation_incomplete``; nothing was deleted, retry.
            ForbiddenError: ``users.protected``; authorisation errors.
            ConflictError: ``users.last_admin``.
        """
        record = await self._record(user_id)
        actor = await self._authorize(actor_id, user_id, "users.deleted")
        if record.protected:
            await self._audit.record(
                actor, "users.deleted", user_id, AuditOutcome.DENIED, details={"reason": "users.protected"}
            )
            raise ForbiddenError("users.protected")
        await self._rbac.ensure_not_last_admin(user_id)
        # credentials first: if a revocation fails the account stays (its keys keep its own
        # permissions, never the "owner is not a user" fallback) and the call can be retried
        await self._revoke(user_id, "users.deleted")
        await self._rbac.remove_all_roles(user_id, actor_id=actor)
        if not await self._store.delete(user_id):
            raise NotFoundError("users.not_found", user_id=user_id)
        self._rbac.invalidate(user_id)
        await self._audit.record(actor, "users.deleted", user_id, AuditOutcome.SUCCESS)

    # -- login ----------------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str, *, client_ip: str | None = None) -> User:
        """Verify *username* and *password*.

        Raises:
            UnauthenticatedError: ``users.invalid_credentials`` — unknown user, wrong password or
                disabled account alike (same argon2 work for each).
            RateLimitedError: ``users.login_throttled`` with ``retry_after`` seconds.
            ValidationError: ``users.invalid_client_ip``.
        """
        account = _throttle_account(username)
        # the attempt counts as a failure before the password is checked, so concurrent attempts
        # cannot all pass the throttle; a success takes it back
        reserved = await self._reserve(account, client_ip)
        record: UserRecord | None = None
        if isinstance(username, str) and _USERNAME_RE.fullmatch(username):
            record = await self._store.get_by_username(username.lower())
        # the same size rule as creation (NFKC form), so every password accepted there logs in
        prepared = _login_candidate(password)
        candidate = "-" if prepared is None else prepared
        stored_hash = record.password_hash if record is not None else await self._dummy()
        ok = await self._verify(stored_hash, candidate) and prepared is not None
        if not ok or record is None or not record.enabled:
            await self._failed(account, client_ip, reserved)
            await self._audit.record(
                "anonymous",
                "users.login",
                record.id if record is not None else "unknown",
                AuditOutcome.FAILURE,
            )
            raise UnauthenticatedError("users.invalid_credentials")
        await self._succeeded(account, client_ip, reserved)
        if self._hasher.check_needs_rehash(record.password_hash):
            record = attrs.evolve(record, password_hash=await self._hash(candidate))
            await self._save(record)
            log.info("users.password_rehashed", user_id=record.id)
        await self._audit.record(record.id, "users.login", record.id, AuditOutcome.SUCCESS)
        return _to_user(record)

    # -- default admin --------------------------------------------------------------------------

    async def ensure_default_admin(
        self, password: str | None = None, *, username: str = "admin"
    ) -> tuple[User, str | None]:
        """Create the protected default admin on first start.

        With ``password=None`` a random password is generated and returned (show it once; it is not
        stored anywhere else). When the protected admin already exists nothing changes (the given
        password is ignored) and ``(admin, None)`` is returned; its admin role is restored if missing.

        Raises:
            ValidationError: the given password breaks the policy.
            ConflictError: ``users.username_taken`` when *username* belongs to an ordinary user.
        """
        existing = await self._store.find_protected()
        if existing is not None:
            await self._ensure_admin_role(existing.id)
            return _to_user(existing), None
        normalized = normalize_username(username)
        generated = secrets.token_urlsafe(18) if password is None else None
        prepared = validate_password(generated or password or "", username=username)
        now = self._clock.now()
        record = UserRecord(
            id=f"usr_{secrets.token_hex(12)}",
            username=username,
            username_normalized=normalized,
            password_hash=await self._hash(prepared),
            email=None,
            display_name="Administrator",
            enabled=True,
            protected=True,
            created_at=now,
            updated_at=now,
            password_changed_at=now,
        )
        if not await self._store.insert(record):
            raced = await self._store.find_protected()
            if raced is None:
                raise ConflictError("users.username_taken", username=username)
            await self._ensure_admin_role(raced.id)
            return _to_user(raced), None
        await self._ensure_admin_role(record.id)
        await self._audit.record(SYSTEM_ACTOR, "users.default_admin_created", record.id, AuditOutcome.SUCCESS)
        log.warning(
            "users.default_admin_created", user_id=record.id, generated_password=generated is not None
        )
        return _to_user(record), generated

    async def _ensure_admin_role(self, user_id: str) -> None:
        roles = await self._rbac.user_roles(user_id)
        if not any(a.role == ADMIN_ROLE and a.team_id is None for a in roles):
            with contextlib.suppress(ConflictError):  # granted concurrently
                await self._rbac.grant_role_as_system(user_id, ADMIN_ROLE)
