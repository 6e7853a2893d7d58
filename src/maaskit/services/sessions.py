"""Server-side sessions with idle and absolute expiry, CSRF tokens and single-use OAuth states.

Example::

    from maaskit.services.sessions import DefaultSessionService
    from maaskit.storage.memory.sessions import MemorySessionStore

    sessions = DefaultSessionService(MemorySessionStore(), csrf_key=secrets.token_bytes(32))
    session, sid = await sessions.create("user-1", data={"locale": "de"})   # sid goes in the cookie
    csrf = sessions.csrf_token(sid)                                        # goes in the page / header
    session = await sessions.validate(sid)                                 # every request; slides expiry
    sessions.verify_csrf(sid, csrf)                                        # every state-changing request
    session, sid = await sessions.rotate(sid)                              # after login / privilege change
    await sessions.destroy(sid)

Design:

* **Ids** are ``secrets.token_urlsafe(32)`` (256 random bits). Stores only ever see the SHA-256
  digest of an id, so a leaked database or Redis dump holds no usable session. A plain hash (no
  salt, no slow KDF) is enough here: with 256-bit random ids there is nothing to brute-force, unlike
  passwords, and a fast digest keeps validation cheap.
* **Expiry**: an idle timeout (30 minutes, slid forward on every successful validation) and an
  absolute timeout (12 hours from creation) that nothing extends; both measured with the injected
  :class:`~maaskit.clock.Clock`. An expired session is deleted when it is next seen and by
  :meth:`SessionService.cleanup_expired`.
* **Rotation**: :meth:`SessionService.rotate` gives the session a new id and destroys the old one
  atomically (call it at login and on every privilege change, against session fixation).
* **CSRF**: the token is an HMAC-SHA256 of the session digest under a server key, so it needs no
  storage, changes when the session id rotates, and is compared in constant time.
* **OAuth state**: :meth:`SessionService.create_oauth_state` stores a random ``state`` (and
  ``nonce``) with a payload such as the PKCE verifier for 10 minutes;
  :meth:`SessionService.consume_oauth_state` takes it atomically, so it works exactly once.
* **Fail closed**: when the store cannot be reached, validation raises ``UnavailableError``; it
  never treats the session as valid.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import attrs
import structlog

from maaskit.clock import Clock, SystemClock
from maaskit.errors import ForbiddenError, UnauthenticatedError, ValidationError
from maaskit.storage.ports.sessions import OAuthStateRecord, SessionRecord, SessionStore

__all__ = [
    "DEFAULT_ABSOLUTE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_STATE_TTL",
    "MAX_DATA_BYTES",
    "DefaultSessionService",
    "OAuthState",
    "OAuthStateData",
    "Session",
    "SessionService",
    "session_digest",
]

log = structlog.get_logger(__name__)

#: Idle timeout: a session unused for this long expires.
DEFAULT_IDLE_TIMEOUT = timedelta(minutes=30)
#: Absolute timeout: a session expires this long after creation, whatever its activity.
DEFAULT_ABSOLUTE_TIMEOUT = timedelta(hours=12)
#: Lifetime of an OAuth ``state``.
DEFAULT_STATE_TTL = timedelta(minutes=10)
#: Largest session data (as compact JSON).
MAX_DATA_BYTES = 64 * 1024

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_MAX_PAYLOAD_ENTRIES = 32
_NONCE_KEY = "_maaskit_nonce"


def session_digest(raw_id: str) -> str:
    """The SHA-256 hex digest under which a session id (or OAuth state) is stored."""
    return hashlib.sha256(raw_id.encode("ascii")).hexdigest()


@attrs.frozen
class Session:
    """A live session.

    Attributes:
        user_id: the signed-in user.
        data: the application's data (a copy; change it with :meth:`SessionService.update_data`).
        created_at: login time.
        last_seen_at: the last validation.
        expires_at: when it expires unless used again (idle expiry, capped by the absolute one).
        absolute_expires_at: when it expires at the latest.
    """

    user_id: str
    data: Mapping[str, Any] = attrs.field(repr=False, hash=False)
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    absolute_expires_at: datetime


@attrs.frozen
class OAuthState:
    """A new OAuth authorization request's ``state`` and ``nonce`` (send both to the provider)."""

    state: str = attrs.field(repr=False)
    nonce: str = attrs.field(repr=False)
    expires_at: datetime


@attrs.frozen
class OAuthStateData:
    """What :meth:`SessionService.consume_oauth_state` returns: the nonce to check in the ID token
    and the payload stored with the state (e.g. the PKCE verifier)."""

    nonce: str = attrs.field(repr=False)
    payload: Mapping[str, str] = attrs.field(repr=False, hash=False)
    created_at: datetime


@runtime_checkable
class SessionService(Protocol):
    """Server-side sessions, CSRF tokens and OAuth states."""

    async def create(self, user_id: str, *, data: Mapping[str, Any] | None = None) -> tuple[Session, str]:
        """Start a session; returns it and its raw id (for the cookie; never stored)."""
        ...

    async def get(self, raw_id: str) -> Session | None:
        """Like :meth:`validate`, but ``None`` for a missing, malformed or expired session."""
        ...

    async def validate(self, raw_id: str) -> Session:
        """The live session for *raw_id*, its idle expiry slid forward."""
        ...

    async def rotate(self, raw_id: str) -> tuple[Session, str]:
        """Give the session a new id; the old id stops working at once."""
        ...

    async def update_data(self, raw_id: str, data: Mapping[str, Any]) -> Session:
        """Replace the session's data."""
        ...

    async def destroy(self, raw_id: str) -> bool:
        """End one session (logout); ``True`` if it existed."""
        ...

    async def destroy_user_sessions(self, user_id: str) -> int:
        """End every session of a user (password change, disable, delete)."""
        ...

    def csrf_token(self, raw_id: str) -> str:
        """The CSRF token bound to the session."""
        ...

    def verify_csrf(self, raw_id: str, token: str | None) -> None:
        """Raise ``ForbiddenError("session.csrf_invalid")`` unless *token* belongs to the session."""
        ...

    async def create_oauth_state(
        self, payload: Mapping[str, str] | None = None, *, ttl: timedelta | None = None
    ) -> OAuthState:
        """Store a new single-use OAuth ``state`` (with a ``nonce`` and *payload*)."""
        ...

    async def consume_oauth_state(self, state: str) -> OAuthStateData:
        """Take the state (exactly once) and return its nonce and payload."""
        ...

    async def cleanup_expired(self) -> int:
        """Delete expired sessions and states."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...


def _check_user(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id or len(user_id) > 256:
        raise ValidationError("session.invalid_user")
    return user_id


def _check_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValidationError("session.invalid_data", reason="data must be a mapping with string keys")
    try:
        encoded = json.dumps(dict(data), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise ValidationError("session.invalid_data", reason="data must be JSON-serialisable") from None
    if len(encoded.encode()) > MAX_DATA_BYTES:
        raise ValidationError("session.invalid_data", reason=f"data must be at most {MAX_DATA_BYTES} bytes")
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DefaultSessionService:
    """The default :class:`SessionService`.

    Args:
        store: where sessions and states live (memory, SQL or Redis).
        clock: time source (default :class:`~maaskit.clock.SystemClock`).
        idle_timeout: sliding inactivity limit (default 30 minutes).
        absolute_timeout: hard limit from creation (default 12 hours).
        csrf_key: server key (>= 32 bytes) for CSRF tokens. Every replica must use the same key;
            when omitted a random key is made, which only suits a single process.
        state_ttl: lifetime of OAuth states (default 10 minutes).

    Raises:
        ValidationError: ``session.invalid_config`` for non-positive timeouts or an idle timeout
            longer than the absolute one, ``session.weak_key`` for a CSRF key under 32 bytes.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        clock: Clock | None = None,
        idle_timeout: timedelta = DEFAULT_IDLE_TIMEOUT,
        absolute_timeout: timedelta = DEFAULT_ABSOLUTE_TIMEOUT,
        csrf_key: bytes | None = None,
        state_ttl: timedelta = DEFAULT_STATE_TTL,
    ) -> None:
        if idle_timeout <= timedelta(0) or absolute_timeout <= timedelta(0) or state_ttl <= timedelta(0):
            raise ValidationError("session.invalid_config", reason="timeouts must be positive")
        if idle_timeout > absolute_timeout:
            raise ValidationError(
                "session.invalid_config", reason="the idle timeout exceeds the absolute one"
            )
        if csrf_key is None:
            csrf_key = secrets.token_bytes(32)
        if not isinstance(csrf_key, bytes) or len(csrf_key) < 32:
            raise ValidationError("session.weak_key")
        self._store = store
        self._clock: Clock = clock or SystemClock()
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._csrf_key = csrf_key
        self._state_ttl = state_ttl

    def __repr__(self) -> str:
        return f"DefaultSessionService(store={self._store!r}, idle={self._idle}, absolute={self._absolute})"

    @staticmethod
    def _digest(raw_id: Any) -> str | None:
        if not isinstance(raw_id, str) or not _ID_RE.match(raw_id):
            return None
        return session_digest(raw_id)

    @staticmethod
    def _session(record: SessionRecord) -> Session:
        return Session(
            user_id=record.user_id,
            data=copy.deepcopy(dict(record.data)),
            created_at=record.created_at,
            last_seen_at=record.last_seen_at,
            expires_at=record.idle_expires_at,
            absolute_expires_at=record.absolute_expires_at,
        )

    def _new_record(
        self, user_id: str, data: Mapping[str, Any], created_at: datetime
    ) -> tuple[SessionRecord, str]:
        now = self._clock.now()
        absolute = created_at + self._absolute
        raw_id = secrets.token_urlsafe(32)
        record = SessionRecord(
            digest=session_digest(raw_id),
            user_id=user_id,
            data=data,
            created_at=created_at,
            last_seen_at=now,
            idle_expires_at=min(now + self._idle, absolute),
            absolute_expires_at=absolute,
        )
        return record, raw_id

    async def create(self, user_id: str, *, data: Mapping[str, Any] | None = None) -> tuple[Session, str]:
        """Start a session for *user_id* with optional JSON-serialisable *data*.

        Returns:
            The session and its raw id. Put the id in a ``Secure; HttpOnly; SameSite`` cookie; it is
            not stored anywhere and cannot be recovered.

        Raises:
            ValidationError: ``session.invalid_user``, ``session.invalid_data``.
        """
        _check_user(user_id)
        record, raw_id = self._new_record(user_id, _check_data(data), self._clock.now())
        await self._store.create(record)
        return self._session(record), raw_id

    async def _live(self, raw_id: Any) -> SessionRecord:
        digest = self._digest(raw_id)
        if digest is None:
            raise UnauthenticatedError("session.invalid")
        record = await self._store.get(digest)
        if record is None:
            raise UnauthenticatedError("session.invalid")
        now = self._clock.now()
        if now >= record.idle_expires_at or now >= record.absolute_expires_at:
            await self._store.delete(digest)
            raise UnauthenticatedError("session.expired")
        return record

    async def validate(self, raw_id: str) -> Session:
        """The live session for *raw_id*, with its idle expiry slid forward.

        Raises:
            UnauthenticatedError: ``session.invalid`` (unknown, malformed, destroyed) or
                ``session.expired``.
            UnavailableError: the store cannot be reached (the request must be refused).
        """
        record = await self._live(raw_id)
        now = self._clock.now()
        idle = min(now + self._idle, record.absolute_expires_at)
        if not await self._store.touch(record.digest, now, idle):
            raise UnauthenticatedError("session.invalid")
        return self._session(attrs.evolve(record, last_seen_at=now, idle_expires_at=idle))

    async def get(self, raw_id: str) -> Session | None:
        """:meth:`validate`, returning ``None`` instead of raising ``UnauthenticatedError``.

        ``UnavailableError`` still propagates: an outage is never reported as "no session".
        """
        try:
            return await self.validate(raw_id)
        except UnauthenticatedError:
            return None

    async def rotate(self, raw_id: str) -> tuple[Session, str]:
        """Move the session to a fresh id, keeping user, data and absolute expiry.

        Raises:
            UnauthenticatedError: ``session.invalid`` / ``session.expired`` (also when another request
                rotated or destroyed it first).
        """
        record = await self._live(raw_id)
        new_record, new_id = self._new_record(record.user_id, record.data, record.created_at)
        if not await self._store.replace(record.digest, new_record):
            raise UnauthenticatedError("session.invalid")
        return self._session(new_record), new_id

    async def update_data(self, raw_id: str, data: Mapping[str, Any]) -> Session:
        """Replace the session's data (validated like :meth:`create`'s)."""
        checked = _check_data(data)
        record = await self._live(raw_id)
        if not await self._store.update_data(record.digest, checked):
            raise UnauthenticatedError("session.invalid")
        return self._session(attrs.evolve(record, data=checked))

    async def destroy(self, raw_id: str) -> bool:
        """End one session; ``False`` when it did not exist (or the id is malformed)."""
        digest = self._digest(raw_id)
        if digest is None:
            return False
        return await self._store.delete(digest)

    async def destroy_user_sessions(self, user_id: str) -> int:
        """End every session of *user_id*; returns how many."""
        count = await self._store.delete_user(_check_user(user_id))
        log.info("user_sessions_destroyed", user_id=user_id, count=count)
        return count

    def csrf_token(self, raw_id: str) -> str:
        """The CSRF token of the session *raw_id* (HMAC-SHA256 of its digest under the server key)."""
        digest = self._digest(raw_id)
        if digest is None:
            raise UnauthenticatedError("session.invalid")
        mac = hmac.new(self._csrf_key, b"maaskit-csrf\x00" + digest.encode(), hashlib.sha256).digest()
        return _b64(mac)

    def verify_csrf(self, raw_id: str, token: str | None) -> None:
        """Check *token* against the session's CSRF token in constant time.

        Raises:
            ForbiddenError: ``session.csrf_invalid`` for a missing or wrong token.
        """
        if not isinstance(token, str) or not token or len(token) > 128 or not token.isascii():
            raise ForbiddenError("session.csrf_invalid")
        try:
            expected = self.csrf_token(raw_id)
        except UnauthenticatedError:
            raise ForbiddenError("session.csrf_invalid") from None
        if not hmac.compare_digest(expected.encode(), token.encode()):
            raise ForbiddenError("session.csrf_invalid")

    async def create_oauth_state(
        self, payload: Mapping[str, str] | None = None, *, ttl: timedelta | None = None
    ) -> OAuthState:
        """Store a random ``state`` and ``nonce`` with *payload* (string pairs, e.g. the PKCE verifier).

        Raises:
            ValidationError: ``session.invalid_state_payload``, ``session.invalid_config`` (bad ttl).
        """
        values = dict(payload or {})
        if len(values) > _MAX_PAYLOAD_ENTRIES or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 4096 and k != _NONCE_KEY
            for k, v in values.items()
        ):
            raise ValidationError("session.invalid_state_payload")
        lifetime = self._state_ttl if ttl is None else ttl
        if lifetime <= timedelta(0):
            raise ValidationError("session.invalid_config", reason="the state ttl must be positive")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        now = self._clock.now()
        record = OAuthStateRecord(
            digest=session_digest(state),
            payload={**values, _NONCE_KEY: nonce},
            created_at=now,
            expires_at=now + lifetime,
        )
        await self._store.put_state(record)
        return OAuthState(state=state, nonce=nonce, expires_at=record.expires_at)

    async def consume_oauth_state(self, state: str) -> OAuthStateData:
        """Take the state exactly once.

        Raises:
            UnauthenticatedError: ``session.invalid_state`` when it is unknown, already used or expired.
        """
        digest = self._digest(state)
        if digest is None:
            raise UnauthenticatedError("session.invalid_state")
        record = await self._store.take_state(digest, self._clock.now())
        if record is None:
            raise UnauthenticatedError("session.invalid_state")
        payload = dict(record.payload)
        nonce = payload.pop(_NONCE_KEY, "")
        return OAuthStateData(nonce=nonce, payload=payload, created_at=record.created_at)

    async def cleanup_expired(self) -> int:
        """Delete expired sessions and OAuth states; returns how many."""
        return await self._store.cleanup_expired(self._clock.now())

    async def ping(self) -> None:
        """Check the store."""
        await self._store.ping()
