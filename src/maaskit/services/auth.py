"""Authentication and authorisation: one layer for every way a caller proves who they are.

Example::

    from maaskit.services.auth import Authenticator

    auth = await app.aget(Authenticator)
    principal = await auth.authenticate_bearer(credential)     # mk_ key, access JWT or admin token
    await auth.require(principal, "users:manage")              # ForbiddenError("rbac.forbidden")

    principal, session_id, csrf = await auth.login("bob", password, client_ip="203.0.113.7")
    principal = await auth.authenticate_session(session_id)     # the cookie value

Every credential becomes a :class:`Principal` whose permissions come from
:class:`~maaskit.services.rbac.RbacService` **at the time of the request** (never from claims in a
token), so admission (API keys) and the admin endpoints use the same check:

* an API key (``mk_...``) acts for its owner. When the owner is a user, the key holds exactly that
  user's current permissions (a key never grants more than its owner holds, and a disabled owner's
  key is refused) — which is why only a principal holding every permission of that user may create,
  rotate or otherwise manage the key (:meth:`Authenticator.require_covers`); when the owner is not a
  user (a service account id), the key holds only ``models:use``;
* an access JWT (three dot-separated segments) is validated by
  :meth:`~maaskit.services.tokens.TokenService.validate_access`; its subject must be an enabled
  user, and a token issued before the user's last password change is refused;
* a session id (the cookie) is validated by :meth:`~maaskit.services.sessions.SessionService.validate`;
* the static admin token (``MAASKIT_ADMIN_TOKEN``, compared in constant time) is a break-glass
  credential holding the ``admin`` role.

Unknown, malformed and refused credentials are one ``UnauthenticatedError("auth.invalid_credential")``
(or the precise code of the token/session/key service); refusals of a permission are
``ForbiddenError("rbac.forbidden", permission=...)`` and are written to the audit log.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs
import structlog
from cachetools import TTLCache
from pydantic import SecretStr

from maaskit.clock import Clock, SystemClock
from maaskit.errors import (
    ForbiddenError,
    MaasError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
    ValidationError,
)
from maaskit.services.api_keys import KEY_PREFIX, ApiKey, ApiKeyService
from maaskit.services.audit import AuditLog, AuditOutcome, DetailValue
from maaskit.services.rbac import ADMIN_ROLE, ALL_PERMISSIONS, RbacService, assigned_permissions, covers
from maaskit.services.sessions import SessionService
from maaskit.services.tokens import TokenPair, TokenService
from maaskit.services.users import User, UserService
from maaskit.storage.ports.users import UserStore

__all__ = [
    "ADMIN_TOKEN_SUBJECT",
    "KEY_ONLY_PERMISSIONS",
    "Authenticator",
    "DefaultAuthenticator",
    "LoginResult",
    "Principal",
    "PrincipalKind",
]

log = structlog.get_logger(__name__)

#: How a principal authenticated.
PrincipalKind = Literal["session", "jwt", "api_key", "admin_token"]

#: The audit-log actor of requests made with the static admin token.
ADMIN_TOKEN_SUBJECT: Final = "admin_token"
#: What an API key holds when its owner is not a user account (a service account id).
KEY_ONLY_PERMISSIONS: Final[frozenset[str]] = frozenset({"models:use"})

_OWNER_UNKNOWN: Final = "unknown"
_OWNER_DISABLED: Final = "disabled"
_OWNER_USER: Final = "user"


@attrs.frozen
class Principal:
    """Who is calling, and what they may do (resolved once per request).

    Attributes:
        kind: how the caller authenticated (:data:`PrincipalKind`).
        subject: the actor recorded in the audit log: a user id, a key owner id or
            :data:`ADMIN_TOKEN_SUBJECT`.
        user_id: the user account acting, ``None`` for the admin token and for keys not owned by a user.
        key_id: the API key used (``kind == "api_key"``), else ``None``.
        team_id: the team a key spends for (keys only).
        roles: the user's global roles (``("admin",)`` for the admin token).
        permissions: the effective global permissions (``"*"`` means all).
    """

    kind: PrincipalKind
    subject: str
    user_id: str | None
    key_id: str | None = None
    team_id: str | None = None
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()

    def allows(self, permission: str) -> bool:
        """Whether *permission* is held globally (a pure set lookup)."""
        return permission in self.permissions or ALL_PERMISSIONS in self.permissions

    @property
    def is_user(self) -> bool:
        """Whether a user account is acting (session, JWT or a key owned by a user)."""
        return self.user_id is not None


@attrs.frozen
class LoginResult:
    """A successful password login to a session.

    Attributes:
        principal: the signed-in user.
        session_id: the raw session id (goes in the cookie only; never logged).
        csrf_token: the CSRF token bound to the session (send it back in ``X-CSRF-Token``).
    """

    principal: Principal
    session_id: str = attrs.field(repr=False)
    csrf_token: str = attrs.field(repr=False)

    def __iter__(self) -> Iterator[Any]:
        """Unpack as ``principal, session_id, csrf_token``."""
        return iter((self.principal, self.session_id, self.csrf_token))


@runtime_checkable
class Authenticator(Protocol):
    """The one authentication and authorisation layer (admin endpoints and admission)."""

    async def authenticate_bearer(self, credential: str) -> Principal:
        """A bearer credential (API key, access JWT or the admin token) -> its principal."""
        ...

    async def authenticate_session(self, raw_session_id: str) -> Principal:
        """A session cookie value -> the signed-in user's principal (idle expiry slid forward)."""
        ...

    async def principal_for_key(self, key: ApiKey) -> Principal:
        """The principal of an already validated API key (for admission, which validates keys itself)."""
        ...

    async def require(self, principal: Principal, permission: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError("rbac.forbidden")`` (audited) unless *principal* holds *permission*."""
        ...

    async def require_for_owner(
        self,
        principal: Principal,
        permission: str,
        owner: Callable[[], Awaitable[str]],
        *,
        own_permission: str,
    ) -> None:
        """Allow with *permission*, or with *own_permission* when the resource belongs to the principal."""
        ...

    async def require_covers(self, principal: Principal, user_id: str) -> None:
        """Raise ``ForbiddenError("users.forbidden_target")`` (audited) unless *principal* holds every
        permission *user_id* is assigned (acting on a user's API keys)."""
        ...

    async def acting_user(self, principal: Principal) -> str:
        """The user id to pass as ``actor_id`` to services that need a user (role changes, reviews)."""
        ...

    async def login(
        self,
        username: str,
        password: str,
        *,
        client_ip: str | None = None,
        previous_session_id: str | None = None,
    ) -> LoginResult:
        """Check the password (throttled) and start a fresh session."""
        ...

    async def logout(
        self,
        principal: Principal | None,
        *,
        session_id: str | None = None,
        access_token: str | None = None,
        refresh_token: str | None = None,
    ) -> None:
        """End a session and/or revoke tokens the caller holds."""
        ...

    async def issue_tokens(self, username: str, password: str, *, client_ip: str | None = None) -> TokenPair:
        """Password grant: an access JWT and a refresh JWT."""
        ...

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend a refresh token (rotation, reuse detection) for a new pair."""
        ...

    async def audit(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        outcome: AuditOutcome | str,
        *,
        details: dict[str, DetailValue] | None = None,
    ) -> None:
        """Record an action of *principal* in the audit log (actor = its subject)."""
        ...

    def invalidate(self, user_id: str | None = None) -> None:
        """Forget cached key-owner data of one user (``None``: everything)."""
        ...


def _invalid() -> UnauthenticatedError:
    return UnauthenticatedError("auth.invalid_credential")


class DefaultAuthenticator:
    """The default :class:`Authenticator`.

    Args:
        users: accounts and password checks.
        rbac: permissions (always read at request time).
        tokens: access/refresh JWTs.
        sessions: server-side sessions and CSRF tokens.
        api_keys: validates ``mk_`` keys.
        audit: where logins, logouts and refusals are recorded.
        clock: time source (the key-owner cache).
        admin_token: the break-glass admin token (``None``: disabled).
        user_store: lets the admin token act as the protected default admin where a service needs a
            user as actor (role changes, access-request decisions).
        owner_cache_ttl: seconds whether a key owner is an (enabled) user and their roles are cached
            (``0``: no cache). Permissions themselves come from the RBAC service's own cache.
    """

    def __init__(
        self,
        users: UserService,
        rbac: RbacService,
        tokens: TokenService,
        sessions: SessionService,
        api_keys: ApiKeyService,
        audit: AuditLog,
        clock: Clock | None = None,
        *,
        admin_token: SecretStr | None = None,
        user_store: UserStore | None = None,
        owner_cache_ttl: float = 5.0,
    ) -> None:
        if owner_cache_ttl < 0:
            raise ValidationError("config.invalid", setting="owner_cache_ttl", reason="must be >= 0")
        self._users = users
        self._rbac = rbac
        self._tokens = tokens
        self._sessions = sessions
        self._keys = api_keys
        self._audit = audit
        self._clock = clock or SystemClock()
        self._admin_token = None if admin_token is None else admin_token.get_secret_value().encode()
        self._user_store = user_store
        self._owners: TTLCache[str, tuple[str, frozenset[str]]] | None = (
            TTLCache(maxsize=10_000, ttl=owner_cache_ttl, timer=self._clock.monotonic)
            if owner_cache_ttl > 0
            else None
        )

    def __repr__(self) -> str:
        return f"DefaultAuthenticator(admin_token={'set' if self._admin_token else 'unset'})"

    def invalidate(self, user_id: str | None = None) -> None:
        """Forget cached key-owner data of *user_id* (``None``: everything)."""
        if self._owners is None:
            return
        if user_id is None:
            self._owners.clear()
        else:
            self._owners.pop(user_id, None)

    # -- principals -------------------------------------------------------------------------------

    async def _roles(self, user_id: str) -> frozenset[str]:
        return frozenset(a.role for a in await self._rbac.user_roles(user_id) if a.team_id is None)

    async def _user_principal(self, user: User, kind: PrincipalKind) -> Principal:
        if not user.enabled:
            raise _invalid()
        perms = await self._rbac.permissions_for(user.id)
        return Principal(
            kind=kind,
            subject=user.id,
            user_id=user.id,
            roles=await self._roles(user.id),
            permissions=perms.permissions,
        )

    async def _user(self, user_id: str) -> User:
        try:
            return await self._users.get(user_id)
        except NotFoundError:
            raise _invalid() from None

    def _admin_principal(self) -> Principal:
        return Principal(
            kind="admin_token",
            subject=ADMIN_TOKEN_SUBJECT,
            user_id=None,
            roles=frozenset({ADMIN_ROLE}),
            permissions=frozenset({ALL_PERMISSIONS}),
        )

    def _is_admin_token(self, credential: str) -> bool:
        if self._admin_token is None:
            return False
        return hmac.compare_digest(credential.encode("utf-8", "surrogatepass"), self._admin_token)

    async def authenticate_bearer(self, credential: str) -> Principal:
        """Resolve a bearer *credential*.

        Raises:
            UnauthenticatedError: ``auth.invalid_credential`` (unknown kind, wrong admin token, a
                JWT of an unknown/disabled user or from before a password change), or the precise
                ``api_key.*`` / ``tokens.*`` code of the key or token service.
        """
        if not isinstance(credential, str) or not credential:
            raise _invalid()
        if self._is_admin_token(credential):
            return self._admin_principal()
        if credential.startswith(KEY_PREFIX):
            return await self.principal_for_key(await self._keys.validate(credential))
        if credential.count(".") == 2:
            claims = await self._tokens.validate_access(credential)
            user = await self._user(claims.subject)
            # tokens issued before the last password change are refused (iat has 1 s resolution)
            changed = int(user.password_changed_at.timestamp())
            if int(claims.issued_at.timestamp()) < changed:
                raise _invalid()
            return await self._user_principal(user, "jwt")
        raise _invalid()

    async def authenticate_session(self, raw_session_id: str) -> Principal:
        """Resolve a session cookie value.

        Raises:
            UnauthenticatedError: ``session.invalid`` / ``session.expired``, or
                ``auth.invalid_credential`` when the user is gone or disabled.
            UnavailableError: the session store cannot be reached (fails closed).
        """
        session = await self._sessions.validate(raw_session_id)
        return await self._user_principal(await self._user(session.user_id), "session")

    async def _owner(self, owner_id: str) -> tuple[str, frozenset[str]]:
        if self._owners is not None:
            cached = self._owners.get(owner_id)
            if cached is not None:
                return cached
        try:
            user = await self._users.get(owner_id)
        except NotFoundError:
            entry: tuple[str, frozenset[str]] = (_OWNER_UNKNOWN, frozenset())
        else:
            entry = (
                (_OWNER_USER, await self._roles(owner_id)) if user.enabled else (_OWNER_DISABLED, frozenset())
            )
        if self._owners is not None:
            self._owners[owner_id] = entry
        return entry

    async def principal_for_key(self, key: ApiKey) -> Principal:
        """The principal of a validated key: its owner's permissions, or only ``models:use``.

        Raises:
            UnauthenticatedError: ``auth.invalid_credential`` when the owner is a disabled user.
        """
        status, roles = await self._owner(key.owner_id)
        if status == _OWNER_DISABLED:
            raise _invalid()
        if status == _OWNER_UNKNOWN:
            return Principal(
                kind="api_key",
                subject=key.owner_id,
                user_id=None,
                key_id=key.id,
                team_id=key.team_id,
                permissions=KEY_ONLY_PERMISSIONS,
            )
        perms = await self._rbac.permissions_for(key.owner_id)
        return Principal(
            kind="api_key",
            subject=key.owner_id,
            user_id=key.owner_id,
            key_id=key.id,
            team_id=key.team_id,
            roles=roles,
            permissions=perms.permissions,
        )

    # -- authorisation ----------------------------------------------------------------------------

    async def _holds(self, principal: Principal, permission: str, team_id: str | None) -> bool:
        if principal.allows(permission):
            return True
        if team_id is None or principal.user_id is None:
            return False
        if principal.kind == "api_key" and principal.team_id is not None and principal.team_id != team_id:
            return False
        scoped = await self._rbac.permissions_for(principal.user_id, team_id=team_id)
        return scoped.allows(permission)

    async def _deny(self, principal: Principal, permission: str) -> ForbiddenError:
        await self.audit(
            principal, "auth.forbidden", permission, AuditOutcome.DENIED, details={"permission": permission}
        )
        return ForbiddenError("rbac.forbidden", permission=permission)

    async def require(self, principal: Principal, permission: str, *, team_id: str | None = None) -> None:
        """Raise ``ForbiddenError("rbac.forbidden", permission=...)`` unless *principal* holds it.

        Global permissions are a set lookup; with *team_id*, team-scoped assignments of the user
        count too (a key bound to another team never does). Refusals are audited.
        """
        if not await self._holds(principal, permission, team_id):
            raise await self._deny(principal, permission)

    async def require_for_owner(
        self,
        principal: Principal,
        permission: str,
        owner: Callable[[], Awaitable[str]],
        *,
        own_permission: str,
    ) -> None:
        """Allow with *permission*; else with *own_permission* when ``await owner()`` is the user.

        *owner* is only called when the principal could act on its own resources, so a caller with
        neither permission learns nothing about the resource (not even whether it exists).
        """
        if principal.allows(permission):
            return
        if principal.user_id is None or not principal.allows(own_permission):
            raise await self._deny(principal, permission)
        if await owner() != principal.user_id:
            raise await self._deny(principal, permission)

    async def require_covers(self, principal: Principal, user_id: str) -> None:
        """Refuse acting on resources of user *user_id* (its API keys) unless *principal* holds every
        permission that user is assigned.

        A key acts with all of its owner's permissions, so whoever creates, rotates, revokes,
        enables, disables or budgets a user's key must hold them all — the rule of user management
        (:func:`maaskit.services.rbac.covers` over :func:`~maaskit.services.rbac.assigned_permissions`:
        every scope, even while the account is disabled). The user itself always passes, and so does
        an id that is not a user account (a service account holds no role: its keys hold only
        ``models:use``).

        Raises:
            ForbiddenError: ``users.forbidden_target``, audited as ``auth.forbidden``.
        """
        if principal.user_id == user_id or ALL_PERMISSIONS in principal.permissions:
            return
        if not covers(principal.permissions, await assigned_permissions(self._rbac, user_id)):
            await self.audit(
                principal, "auth.forbidden", user_id[:256], AuditOutcome.DENIED,
                details={"reason": "users.forbidden_target"},
            )  # fmt: skip
            raise ForbiddenError("users.forbidden_target")

    async def acting_user(self, principal: Principal) -> str:
        """The user id to pass as ``actor_id`` where a service needs a user.

        For the admin token this is the protected default admin (break glass acts as that admin).

        Raises:
            ForbiddenError: ``auth.user_required`` when no user account can act.
        """
        if principal.user_id is not None:
            return principal.user_id
        if principal.kind == "admin_token" and self._user_store is not None:
            record = await self._user_store.find_protected()
            if record is not None and record.enabled:
                return record.id
        raise ForbiddenError("auth.user_required")

    # -- login, logout, tokens --------------------------------------------------------------------

    async def _authenticate(self, username: str, password: str, client_ip: str | None, method: str) -> User:
        try:
            return await self._users.authenticate(username, password, client_ip=client_ip)
        except RateLimitedError:
            await self._audit.record(
                "anonymous",
                "auth.login",
                "unknown",
                AuditOutcome.FAILURE,
                details={"reason": "users.login_throttled", "method": method},
            )
            raise

    async def login(
        self,
        username: str,
        password: str,
        *,
        client_ip: str | None = None,
        previous_session_id: str | None = None,
    ) -> LoginResult:
        """Password login to a new session.

        The session id is always new; a session the client presented before logging in
        (*previous_session_id*) is destroyed, so a planted id never becomes authenticated
        (session fixation).

        Raises:
            UnauthenticatedError: ``users.invalid_credentials`` (same for every failure).
            RateLimitedError: ``users.login_throttled``.
        """
        user = await self._authenticate(username, password, client_ip, "session")
        if previous_session_id:
            await self._sessions.destroy(previous_session_id)
        _session, raw_id = await self._sessions.create(user.id)
        principal = await self._user_principal(user, "session")
        await self.audit(
            principal, "auth.login", user.id, AuditOutcome.SUCCESS, details={"method": "session"}
        )
        return LoginResult(principal, raw_id, self._sessions.csrf_token(raw_id))

    async def logout(
        self,
        principal: Principal | None,
        *,
        session_id: str | None = None,
        access_token: str | None = None,
        refresh_token: str | None = None,
    ) -> None:
        """Destroy *session_id* and revoke *access_token* / *refresh_token* (its whole family).

        Tokens that do not verify are ignored (there is nothing to revoke).
        """
        if session_id:
            await self._sessions.destroy(session_id)
        for token in (access_token, refresh_token):
            if token:
                with contextlib.suppress(UnauthenticatedError):
                    await self._tokens.revoke_token(token)
        target = principal.subject if principal is not None else "unknown"
        await self.audit(principal, "auth.logout", target, AuditOutcome.SUCCESS)

    async def issue_tokens(self, username: str, password: str, *, client_ip: str | None = None) -> TokenPair:
        """Password grant: verify (throttled) and issue an access + refresh JWT pair (a new family)."""
        user = await self._authenticate(username, password, client_ip, "token")
        pair = await self._tokens.issue_pair(user.id)
        await self._audit.record(
            user.id, "auth.token_issued", user.id, AuditOutcome.SUCCESS, details={"jti": pair.access.jti}
        )
        return pair

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend *refresh_token* for a new pair; refused (and the family revoked) for a gone or disabled user.

        Raises:
            UnauthenticatedError: the ``tokens.*`` codes (reuse revokes the family), or
                ``auth.invalid_credential`` for a deleted or disabled user.
        """
        claims = self._tokens.claims(refresh_token)
        try:
            user = await self._users.get(claims.subject)
            ok = user.enabled
        except NotFoundError:
            ok = False
        if not ok:
            if claims.family_id is not None:
                await self._tokens.revoke_family(claims.family_id)
            await self._audit.record(
                claims.subject, "auth.token_refreshed", claims.subject, AuditOutcome.DENIED,
                details={"reason": "auth.invalid_credential"},
            )  # fmt: skip
            raise _invalid()
        try:
            pair = await self._tokens.refresh(refresh_token)
        except MaasError as exc:
            await self._audit.record(
                claims.subject, "auth.token_refreshed", claims.subject, AuditOutcome.DENIED,
                details={"reason": exc.code},
            )  # fmt: skip
            raise
        await self._audit.record(claims.subject, "auth.token_refreshed", claims.subject, AuditOutcome.SUCCESS)
        return pair

    async def audit(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        outcome: AuditOutcome | str,
        *,
        details: dict[str, DetailValue] | None = None,
    ) -> None:
        """Record *action* with the principal's subject as actor and how it authenticated."""
        extra: dict[str, DetailValue] = dict(details or {})
        if principal is None:
            actor = "anonymous"
        else:
            actor = principal.subject
            extra["auth"] = principal.kind
            if principal.key_id is not None:
                extra["key_id"] = principal.key_id
        await self._audit.record(actor, action, target or "-", outcome, details=extra)
