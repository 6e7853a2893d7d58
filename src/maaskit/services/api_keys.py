"""API keys: create, validate (hot path), rotate, revoke, toggle, budgets and limits.

Keys look like ``mk_`` + 43 base62 characters (32 random bytes) + a 6-character base62 CRC32
checksum of those 43 characters: 52 ASCII characters in all. A malformed key is refused by a pure
function (:func:`parse_key`) before any cache or storage call. Only a keyed digest
(HMAC-SHA256 with a server *pepper*) and a display hint (``mk_…abcd``) are stored.

Example::

    from maaskit.services.api_keys import DefaultApiKeyService
    from maaskit.storage.memory.api_keys import MemoryApiKeyStore
    from maaskit.clock import SystemClock

    keys = DefaultApiKeyService(MemoryApiKeyStore(), SystemClock(), pepper=b"x" * 32)
    created = await keys.create("user_1", name="laptop", budget_micros=5_000_000)
    print(created.secret)                     # shown once; never stored
    key = await keys.validate(created.secret) # ApiKey, or UnauthenticatedError
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import hashlib
import hmac
import math
import secrets
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final, Protocol, runtime_checkable

import attrs
import structlog
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from maaskit._tasks import shared_task
from maaskit.clock import Clock, SystemClock, to_utc
from maaskit.errors import ConflictError, NotFoundError, UnauthenticatedError, ValidationError
from maaskit.money import parse_micros
from maaskit.services.model_names import is_valid_model_name
from maaskit.storage.ports.api_keys import ApiKeyRecord, ApiKeyStore, KeyInvalidationBus
from maaskit.storage.ports.limits import MAX_LIMIT_UNITS

__all__ = [
    "KEY_LENGTH",
    "KEY_PREFIX",
    "MIN_PEPPER_BYTES",
    "UNCHANGED",
    "ApiKey",
    "ApiKeyService",
    "CreatedKey",
    "DefaultApiKeyService",
    "KeyRotation",
    "Unchanged",
    "generate_key",
    "is_well_formed_key",
    "key_hint",
    "parse_key",
]

log = structlog.get_logger(__name__)

#: Every maaskit API key starts with this prefix (lower case; ``MK_`` is refused).
KEY_PREFIX: Final = "mk_"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RANDOM_BYTES: Final = 32
_RANDOM_CHARS: Final = 43  # 62**43 > 2**256
_CHECK_CHARS: Final = 6  # 62**6 > 2**32
#: Length of every well-formed key: prefix + 43 random + 6 checksum characters = 52.
KEY_LENGTH: Final = len(KEY_PREFIX) + _RANDOM_CHARS + _CHECK_CHARS
_BODY_END: Final = len(KEY_PREFIX) + _RANDOM_CHARS
#: The shortest accepted server pepper, in bytes.
MIN_PEPPER_BYTES: Final = 32
_MAX_TEXT: Final = 256
# rpm/tpm are per minute: the rate limiter keeps limit * 60,000 ms below MAX_LIMIT_UNITS
_MAX_LIMIT: Final = (MAX_LIMIT_UNITS - 1) // 60_000
_MAX_GRACE_SECONDS: Final = 366 * 86400.0
_MAX_CAS_ATTEMPTS: Final = 5
_ROTATE_INFO: Final = b"maaskit.api_key.rotate\x00"
_IDEMPOTENCY_INFO: Final = b"maaskit.api_key.idempotency\x00"
_CACHE_INFO: Final = b"maaskit.api_key.cache\x00"
_INF: Final = math.inf

_hmac_digest = hmac.digest
_compare = hmac.compare_digest
_crc32 = zlib.crc32
_PREFIX_BYTES: Final = KEY_PREFIX.encode("ascii")


def _b62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    if number:
        raise ValueError("number too large for the width")
    return "".join(reversed(chars))


# Every two-digit base62 string, by value: the checksum is three table look-ups.
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _b62_crc(raw_body: bytes) -> str:
    # CRC32 of the body in six fixed base62 digits; this runs on every request.
    n = _crc32(raw_body)  # n < 2**32 < 62**6, so n // 62**4 < 62**2
    return _PAIRS[n // 14776336] + _PAIRS[n // 3844 % 3844] + _PAIRS[n % 3844]


def _checksum(body: str) -> str:
    return _b62_crc(body.encode("ascii"))


def _malformed() -> UnauthenticatedError:
    return UnauthenticatedError("api_key.malformed")


def _key_from_random(random: bytes) -> str:
    body = _b62(int.from_bytes(random, "big"), _RANDOM_CHARS)
    return KEY_PREFIX + body + _checksum(body)


def generate_key() -> str:
    """A fresh random key: ``mk_`` + base62(32 bytes from :func:`secrets.token_bytes`) + checksum."""
    return _key_from_random(secrets.token_bytes(_RANDOM_BYTES))


def is_well_formed_key(text: object) -> bool:
    """``True`` if *text* has the exact key format (prefix, length, alphabet, checksum).

    Pure and cheap: the length is checked first, so a megabyte of input costs nothing.
    """
    if type(text) is not str or len(text) != KEY_LENGTH or not text.startswith(KEY_PREFIX):
        return False
    if not text.isascii() or not text[3:].isalnum():  # ASCII alnum is exactly the base62 alphabet
        return False
    return _checksum(text[3:_BODY_END]) == text[_BODY_END:]


def parse_key(text: object) -> str:
    """Return *text* if it is a well-formed key.

    Raises:
        UnauthenticatedError: ``api_key.malformed`` for anything else (wrong type, length, prefix,
            alphabet or checksum). The message never contains the input.
    """
    if not is_well_formed_key(text):
        raise _malformed()
    return text  # type: ignore[return-value]  # is_well_formed_key proved it is a str


def key_hint(secret: str) -> str:
    """The display hint of a key: ``mk_…`` + its last four characters."""
    return f"{KEY_PREFIX}…{secret[-4:]}"


class Unchanged(enum.Enum):
    """Marker type of :data:`UNCHANGED` (an argument left as it is)."""

    UNCHANGED = "UNCHANGED"


#: Pass (or leave) this to keep a field as it is in :meth:`ApiKeyService.update_limits`.
UNCHANGED: Final = Unchanged.UNCHANGED


def _frozen_models(value: Iterable[str]) -> frozenset[str]:
    return value if isinstance(value, frozenset) else frozenset(value)


def _metadata(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class ApiKey:
    """An API key as callers see it: never the secret, never the digest.

    Attributes:
        id: stable id, unchanged by rotation.
        owner_id: the owning user or service account.
        team_id: the team the key spends for, if any.
        name: a human label.
        hint: display hint of the current secret, e.g. ``mk_…abcd``.
        allowed_models: models the key may call; empty means every model.
        budget_micros: key-level spend limit in micro-units, ``None`` for none.
        rpm_limit: requests per minute, ``None`` for none.
        tpm_limit: tokens per minute, ``None`` for none.
        expires_at: when the key stops working, ``None`` for never.
        enabled: ``False`` while switched off (reversible).
        revoked_at: when it was revoked (irreversible), else ``None``.
        created_at: creation time.
        updated_at: last change.
        rotation_counter: how many times it was rotated.
        previous_valid_until: end of the grace period of the secret replaced by the last rotation.
        metadata: free-form string pairs.
    """

    id: str
    owner_id: str
    team_id: str | None
    name: str
    hint: str
    allowed_models: frozenset[str] = attrs.field(converter=_frozen_models)
    budget_micros: int | None
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: datetime | None
    enabled: bool
    revoked_at: datetime | None
    created_at: datetime
    updated_at: datetime
    rotation_counter: int = 0
    previous_valid_until: datetime | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_metadata, hash=False)

    def allows_model(self, model: str) -> bool:
        """``True`` if this key may call *model* (an empty allow-list allows every model)."""
        return not self.allowed_models or model in self.allowed_models


@attrs.frozen
class CreatedKey:
    """A key together with its secret: the only time the secret is ever returned.

    Attributes:
        key: the stored key.
        secret: the full ``mk_...`` secret; show it to the user once (hidden from ``repr``).
    """

    key: ApiKey
    secret: str = attrs.field(repr=False)


@attrs.frozen
class KeyRotation(CreatedKey):
    """The result of :meth:`ApiKeyService.rotate`: the new secret plus the old one's fate.

    Attributes:
        previous_valid_until: until when the replaced secret still works (``None``: dead at once).
        replayed: ``True`` when this is the answer to a retried idempotency key (no new rotation).
    """

    previous_valid_until: datetime | None
    replayed: bool = False


@runtime_checkable
class ApiKeyService(Protocol):
    """Create, validate, rotate, revoke and manage API keys."""

    async def create(
        self,
        owner_id: str,
        *,
        name: str,
        team_id: str | None = None,
        allowed_models: Iterable[str] = (),
        budget_micros: int | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        expires_at: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CreatedKey:
        """Create a key; the returned :class:`CreatedKey` holds the secret, shown this once."""
        ...

    async def validate(self, secret: str) -> ApiKey:
        """The active key for *secret*, or ``UnauthenticatedError`` with a precise code."""
        ...

    async def rotate(
        self, key_id: str, *, grace_seconds: float | None = None, idempotency_key: str | None = None
    ) -> KeyRotation:
        """Give the key a new secret; the old one keeps working for *grace_seconds*."""
        ...

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key for good (idempotent)."""
        ...

    async def set_enabled(self, key_id: str, enabled: bool) -> ApiKey:
        """Switch the key off or on again."""
        ...

    async def get(self, key_id: str) -> ApiKey:
        """The key with *key_id* (``NotFoundError`` if none)."""
        ...

    async def list(
        self, *, owner_id: str | None = None, team_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKey]:
        """Keys matching every given filter, oldest first."""
        ...

    async def update_budget(self, key_id: str, budget_micros: int | None) -> ApiKey:
        """Set (or with ``None`` remove) the key-level budget in micro-units."""
        ...

    async def update_limits(
        self,
        key_id: str,
        *,
        rpm_limit: int | Unchanged | None = UNCHANGED,
        tpm_limit: int | Unchanged | None = UNCHANGED,
        allowed_models: Iterable[str] | Unchanged = UNCHANGED,
        expires_at: datetime | Unchanged | None = UNCHANGED,
    ) -> ApiKey:
        """Change limits, the model allow-list or the expiry; omitted fields stay as they are."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` if the key store cannot be reached."""
        ...


# --- input validation (all of it runs before any storage call) -------------------------------


def _invalid(field: str, reason: str) -> ValidationError:
    return ValidationError("api_key.invalid_field", field=field, reason=reason)


def _check_text(value: object, field: str, *, max_length: int = _MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    if not value or len(value) > max_length:
        raise _invalid(field, f"must be 1 to {max_length} characters")
    if not value.isprintable():
        raise _invalid(field, "must not contain control characters")
    return value


def _check_key_id(key_id: object) -> str:
    return _check_text(key_id, "key_id", max_length=64)


def _check_limit(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, "must be an integer")
    if not 1 <= value <= _MAX_LIMIT:
        raise _invalid(field, f"must be a positive integer no larger than {_MAX_LIMIT}")
    return value


def _check_models(models: Iterable[str]) -> frozenset[str]:
    if isinstance(models, str | bytes):
        raise _invalid("allowed_models", "must be a collection of model names, not one string")
    checked = frozenset(_check_text(m, "allowed_models") for m in models)
    if not all(is_valid_model_name(m) for m in checked):
        raise _invalid("allowed_models", "entries must be model names (no paths, URLs or spaces)")
    if len(checked) > 1000:
        raise _invalid("allowed_models", "at most 1000 models")
    return checked


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or len(metadata) > 64:
        raise _invalid("metadata", "must be a mapping of at most 64 string pairs")
    return {
        _check_text(k, "metadata", max_length=128): _check_text(v, "metadata", max_length=1024)
        for k, v in metadata.items()
    }


def _check_expiry(value: object, now: datetime) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise _invalid("expires_at", "must be a timezone-aware datetime")
    try:
        value = to_utc(value)
    except ValueError as exc:  # beyond year 9999 in UTC
        raise _invalid("expires_at", str(exc)) from None
    if value <= now:
        raise _invalid("expires_at", "must be in the future")
    return value


def _check_budget(value: object) -> int | None:
    return None if value is None else parse_micros(value, field="budget_micros")


def _to_key(record: ApiKeyRecord) -> ApiKey:
    return ApiKey(
        id=record.id,
        owner_id=record.owner_id,
        team_id=record.team_id,
        name=record.name,
        hint=record.hint,
        allowed_models=record.allowed_models,
        budget_micros=record.budget_micros,
        rpm_limit=record.rpm_limit,
        tpm_limit=record.tpm_limit,
        expires_at=record.expires_at,
        enabled=record.enabled,
        revoked_at=record.revoked_at,
        created_at=record.created_at,
        updated_at=record.updated_at,
        rotation_counter=record.rotation_counter,
        previous_valid_until=record.previous_valid_until,
        metadata=record.metadata,
    )


class DefaultApiKeyService:
    """The default :class:`ApiKeyService`: keyed digests, a validation cache, cross-replica invalidation.

    Args:
        store: where keys live (:class:`~maaskit.storage.ports.api_keys.ApiKeyStore`).
        clock: the time source.
        pepper: the server secret keying every digest (at least 32 bytes; keep it out of the
            database — losing it invalidates every key, leaking it with the database lets an attacker
            test guesses offline).
        cache_ttl: seconds a validated key stays in the in-process cache (``0`` disables the cache).
            With a working invalidation bus changes reach every replica within about a second;
            ``cache_ttl`` bounds staleness when a message is lost.
        rotation_grace: default seconds an old secret keeps working after :meth:`rotate`.
        invalidation: the bus shared by all replicas; ``None`` for a single process.
        max_cache_entries: the cache's size bound (oldest entries are dropped first).

    Raises:
        ValidationError: ``api_key.invalid_pepper`` for a short or non-bytes pepper,
            ``api_key.invalid_field`` for a bad ``cache_ttl``/``rotation_grace``/``max_cache_entries``.
    """

    def __init__(
        self,
        store: ApiKeyStore,
        clock: Clock,
        *,
        pepper: bytes,
        cache_ttl: float = 60.0,
        rotation_grace: float = 86400.0,
        invalidation: KeyInvalidationBus | None = None,
        max_cache_entries: int = 100_000,
    ) -> None:
        if not isinstance(pepper, bytes) or len(pepper) < MIN_PEPPER_BYTES:
            raise ValidationError("api_key.invalid_pepper", min_length=MIN_PEPPER_BYTES)
        self._cache_ttl = self._check_seconds(cache_ttl, "cache_ttl")
        self._rotation_grace = self._check_seconds(rotation_grace, "rotation_grace")
        if (
            isinstance(max_cache_entries, bool)
            or not isinstance(max_cache_entries, int)
            or max_cache_entries < 1
        ):
            raise _invalid("max_cache_entries", "must be a positive integer")
        self._store = store
        self._clock = clock
        # the system clock's time() is time.time(): call it directly on the hot path
        self._time = time.time if type(clock) is SystemClock else clock.time
        self._pepper = pepper
        # The validation cache is keyed by a keyed BLAKE2b digest of the secret (a MAC under a key
        # derived from the pepper): about four times cheaper per hit than HMAC-SHA256, which is
        # computed only on a miss, for the store. Neither the secret nor the stored digest is kept.
        cache_mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CACHE_INFO).derive(pepper)
        self._cache_mac = hashlib.blake2b(key=cache_mac_key, digest_size=32)
        self._bus = invalidation
        self._max_cache = max_cache_entries
        # cache digest -> (key, deadline as epoch seconds: min(cache expiry, key expiry, grace end))
        self._cache: dict[bytes, tuple[ApiKey, float]] = {}
        self._cached_digests: dict[str, set[bytes]] = {}
        # Bumped by every invalidation; a store read only fills the cache if it is unchanged.
        self._epoch = 0
        # store look-ups under way, by (cache digest, epoch): concurrent misses of one key share
        # one (a cache expiry under load is one query, not one per waiting request)
        self._lookups: dict[tuple[bytes, int], asyncio.Future[ApiKey]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"DefaultApiKeyService(store={self._store!r}, cached={len(self._cache)})"

    @staticmethod
    def _check_seconds(value: object, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(field, "must be a number of seconds")
        if not math.isfinite(value) or not 0 <= value <= _MAX_GRACE_SECONDS:
            raise _invalid(field, f"must be between 0 and {int(_MAX_GRACE_SECONDS)} seconds")
        return float(value)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to the invalidation bus (if any) and start it. Idempotent."""
        if self._bus is not None and self._unsubscribe is None:
            self._unsubscribe = self._bus.add_listener(self.invalidate_cached)
            await self._bus.start()

    async def stop(self) -> None:
        """Stop listening and stop the bus. Idempotent."""
        if self._bus is not None and self._unsubscribe is not None:
            remove, self._unsubscribe = self._unsubscribe, None
            remove()
            await self._bus.stop()

    async def __aenter__(self) -> DefaultApiKeyService:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- digests --------------------------------------------------------------------------------

    def _digest(self, secret: str) -> bytes:
        return _hmac_digest(self._pepper, secret.encode("ascii"), "sha256")

    def _idempotency_digest(self, key_id: str, idempotency_key: str) -> bytes:
        msg = _IDEMPOTENCY_INFO + key_id.encode() + b"\x00" + idempotency_key.encode()
        return _hmac_digest(self._pepper, msg, "sha256")

    def _derive_secret(self, key_id: str, counter: int, idempotency_key: str) -> str:
        info = _ROTATE_INFO + b"\x00".join((key_id.encode(), str(counter).encode(), idempotency_key.encode()))
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_RANDOM_BYTES, salt=None, info=info)
        return _key_from_random(hkdf.derive(self._pepper))

    @staticmethod
    def _check_idempotency_key(value: object) -> str:
        if not isinstance(value, str) or not 16 <= len(value) <= 200 or not value.isascii():
            raise ValidationError(
                "api_key.invalid_idempotency_key", reason="must be 16 to 200 ASCII characters (e.g. a UUID)"
            )
        if not value.isprintable():
            raise ValidationError(
                "api_key.invalid_idempotency_key", reason="must not contain control characters"
            )
        return value

    # --- the cache ------------------------------------------------------------------------------

    def invalidate_cached(self, key_id: str | None = None) -> None:
        """Drop *key_id* (or, with ``None``, every key) from this process's validation cache.

        Also bumps the cache epoch, so a validation that read the store before this call cannot
        write what it read back into the cache. The invalidation bus calls this on every replica.
        """
        self._epoch += 1
        if key_id is None:
            self._cache.clear()
            self._cached_digests.clear()
            return
        for digest in self._cached_digests.pop(key_id, ()):
            self._cache.pop(digest, None)

    @property
    def cached_keys(self) -> int:
        """How many digests the validation cache holds (for metrics and tests)."""
        return len(self._cache)

    def _cache_put(self, digest: bytes, key: ApiKey, deadline: float) -> None:
        cache = self._cache
        if digest not in cache and len(cache) >= self._max_cache:
            oldest = next(iter(cache))
            old_key = cache.pop(oldest)[0]
            digests = self._cached_digests.get(old_key.id)
            if digests is not None:
                digests.discard(oldest)
                if not digests:
                    del self._cached_digests[old_key.id]
        cache[digest] = (key, deadline)
        self._cached_digests.setdefault(key.id, set()).add(digest)

    # --- validation (the hot path) --------------------------------------------------------------

    async def validate(self, secret: str) -> ApiKey:
        """The active key for *secret*.

        The format is checked first (no cache or store call for a malformed key), then the keyed
        digest is looked up in the cache and, on a miss, in the store.

        Raises:
            UnauthenticatedError: ``api_key.malformed``, ``api_key.unknown``, ``api_key.revoked``,
                ``api_key.disabled``, ``api_key.expired`` or ``api_key.rotated`` (an old secret
                whose rotation grace period ended).
        """
        key = self.validate_cached(secret)  # refuses a malformed key before any cache access
        if key is not None:
            return key
        raw = secret.encode("ascii")
        mac = self._cache_mac.copy()
        mac.update(raw)
        cache_key = mac.digest()
        # Join a look-up of the same key started in the same epoch: one begun before an
        # invalidation (revoke, disable, rotation) is never joined by a request that came after it.
        lookup_id = (cache_key, self._epoch)
        lookup = self._lookups.get(lookup_id)
        if lookup is None:
            lookup = self._lookups[lookup_id] = shared_task(
                self._validate_uncached(_hmac_digest(self._pepper, raw, "sha256"), cache_key),
                lambda _done: self._lookups.pop(lookup_id, None),
            )
        # shielded: a caller that goes away does not cancel the others' look-up
        return await asyncio.shield(lookup)

    def validate_cached(self, secret: str) -> ApiKey | None:
        """The key for *secret* if this process's validation cache holds it, else ``None``.

        Synchronous (no store access): a hot path calls it first and awaits :meth:`validate` only
        on ``None``. The format is checked first, exactly as in :meth:`validate`.

        Raises:
            UnauthenticatedError: ``api_key.malformed`` (before any cache access).
        """
        # Inlined is_well_formed_key (the length first: a megabyte of input costs nothing).
        if secret.__class__ is not str or len(secret) != KEY_LENGTH:
            raise _malformed()
        try:
            raw = secret.encode("ascii")
        except UnicodeEncodeError:
            raise _malformed() from None
        # bytes.isalnum() is exactly [0-9A-Za-z], the base62 alphabet
        if not raw[3:].isalnum() or raw[:3] != _PREFIX_BYTES:
            raise _malformed()
        n = _crc32(raw[3:_BODY_END])  # _b62_crc, inlined: the last six characters
        if not secret.endswith(_PAIRS[n // 14776336] + _PAIRS[n // 3844 % 3844] + _PAIRS[n % 3844]):
            raise _malformed()
        mac = self._cache_mac.copy()
        mac.update(raw)
        entry = self._cache.get(mac.digest())
        if entry is not None and self._time() < entry[1]:
            return entry[0]
        return None

    async def _validate_uncached(self, digest: bytes, cache_key: bytes) -> ApiKey:
        epoch = self._epoch
        self._cache.pop(cache_key, None)  # stale if present
        record = await self._store.find_by_digest(digest)
        if record is None:
            raise UnauthenticatedError("api_key.unknown")
        if _compare(record.digest, digest):
            current = True
        elif record.previous_digest is not None and _compare(record.previous_digest, digest):
            current = False
        else:  # a store that returned the wrong row
            raise UnauthenticatedError("api_key.unknown")
        now = self._time()
        if record.revoked_at is not None:
            raise UnauthenticatedError("api_key.revoked", key_id=record.id)
        if not record.enabled:
            raise UnauthenticatedError("api_key.disabled", key_id=record.id)
        deadline = now + self._cache_ttl
        if record.expires_at is not None:
            expires = record.expires_at.timestamp()
            if now >= expires:
                raise UnauthenticatedError("api_key.expired", key_id=record.id)
            deadline = min(deadline, expires)
        if not current:
            grace_end = record.previous_valid_until.timestamp() if record.previous_valid_until else -_INF
            if now >= grace_end:
                raise UnauthenticatedError("api_key.rotated", key_id=record.id)
            deadline = min(deadline, grace_end)
        key = _to_key(record)
        if self._cache_ttl > 0 and epoch == self._epoch:
            self._cache_put(cache_key, key, deadline)
        return key

    # --- management -----------------------------------------------------------------------------

    async def create(
        self,
        owner_id: str,
        *,
        name: str,
        team_id: str | None = None,
        allowed_models: Iterable[str] = (),
        budget_micros: int | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        expires_at: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CreatedKey:
        """Create a key for *owner_id* (every argument is validated before anything is written).

        Raises:
            ValidationError: ``api_key.invalid_field`` or ``money.invalid`` (budget) for bad input.
        """
        now = self._clock.now()
        owner_id = _check_text(owner_id, "owner_id")
        name = _check_text(name, "name")
        team_id = None if team_id is None else _check_text(team_id, "team_id")
        models = _check_models(allowed_models)
        budget = _check_budget(budget_micros)
        rpm = _check_limit(rpm_limit, "rpm_limit")
        tpm = _check_limit(tpm_limit, "tpm_limit")
        expiry = _check_expiry(expires_at, now)
        meta = _check_metadata(metadata)
        secret = generate_key()
        record = ApiKeyRecord(
            id=f"key_{uuid.uuid4().hex}",
            digest=self._digest(secret),
            hint=key_hint(secret),
            owner_id=owner_id,
            team_id=team_id,
            name=name,
            allowed_models=models,
            budget_micros=budget,
            rpm_limit=rpm,
            tpm_limit=tpm,
            expires_at=expiry,
            enabled=True,
            revoked_at=None,
            created_at=now,
            updated_at=now,
            metadata=meta,
        )
        await self._store.insert(record)
        log.info("api_key.created", key_id=record.id, owner_id=owner_id, team_id=team_id)
        return CreatedKey(key=_to_key(record), secret=secret)

    async def _load(self, key_id: str) -> ApiKeyRecord:
        record = await self._store.get(key_id)
        if record is None:
            raise NotFoundError("api_key.not_found", key_id=key_id)
        return record

    async def _changed(self, key_id: str) -> None:
        """Drop *key_id* here at once, then tell the other replicas."""
        self.invalidate_cached(key_id)
        if self._bus is not None:
            try:
                await self._bus.publish(key_id)
            except Exception as exc:  # the change is stored; other replicas fall back to cache_ttl
                log.warning("api_key.invalidation_publish_failed", key_id=key_id, error=type(exc).__name__)

    async def _update(self, key_id: str, change: _Change) -> ApiKey:
        key_id = _check_key_id(key_id)
        for _ in range(_MAX_CAS_ATTEMPTS):
            record = await self._load(key_id)
            updated = change(record)
            if updated is record:
                return _to_key(record)
            updated = attrs.evolve(updated, version=record.version + 1, updated_at=self._clock.now())
            if await self._store.update(updated, expected_version=record.version):
                await self._changed(key_id)
                return _to_key(updated)
        raise ConflictError("api_key.concurrent_update", key_id=key_id)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key for good; every secret of it (current and in grace) stops working.

        Idempotent: revoking a revoked key returns it unchanged.
        """

        def change(record: ApiKeyRecord) -> ApiKeyRecord:
            if record.revoked_at is not None:
                return record
            return attrs.evolve(record, revoked_at=self._clock.now())

        key = await self._update(key_id, change)
        log.info("api_key.revoked", key_id=key.id)
        return key

    async def set_enabled(self, key_id: str, enabled: bool) -> ApiKey:
        """Switch a key off (``False``) or on again (``True``).

        Raises:
            ConflictError: ``api_key.revoked_immutable`` for a revoked key.
        """
        if not isinstance(enabled, bool):
            raise _invalid("enabled", "must be true or false")

        def change(record: ApiKeyRecord) -> ApiKeyRecord:
            _refuse_revoked(record)
            return record if record.enabled is enabled else attrs.evolve(record, enabled=enabled)

        key = await self._update(key_id, change)
        log.info("api_key.enabled_changed", key_id=key.id, enabled=enabled)
        return key

    async def update_budget(self, key_id: str, budget_micros: int | None) -> ApiKey:
        """Set the key-level budget in integer micro-units (``None`` removes it).

        Raises:
            ValidationError: ``money.invalid`` for floats, NaN, negative or out-of-range values
                (nothing is written).
            ConflictError: ``api_key.revoked_immutable`` for a revoked key.
        """
        budget = _check_budget(budget_micros)

        def change(record: ApiKeyRecord) -> ApiKeyRecord:
            _refuse_revoked(record)
            return attrs.evolve(record, budget_micros=budget)

        key = await self._update(key_id, change)
        log.info("api_key.budget_changed", key_id=key.id, budget_micros=budget)
        return key

    async def update_limits(
        self,
        key_id: str,
        *,
        rpm_limit: int | Unchanged | None = UNCHANGED,
        tpm_limit: int | Unchanged | None = UNCHANGED,
        allowed_models: Iterable[str] | Unchanged = UNCHANGED,
        expires_at: datetime | Unchanged | None = UNCHANGED,
    ) -> ApiKey:
        """Change rate limits, the model allow-list or the expiry; omitted fields stay.

        Raises:
            ValidationError: ``api_key.invalid_field`` (nothing is written).
            ConflictError: ``api_key.revoked_immutable`` for a revoked key.
        """
        changes: dict[str, object] = {}
        if rpm_limit is not UNCHANGED:
            changes["rpm_limit"] = _check_limit(rpm_limit, "rpm_limit")
        if tpm_limit is not UNCHANGED:
            changes["tpm_limit"] = _check_limit(tpm_limit, "tpm_limit")
        if not isinstance(allowed_models, Unchanged):
            changes["allowed_models"] = _check_models(allowed_models)
        if expires_at is not UNCHANGED:
            changes["expires_at"] = _check_expiry(expires_at, self._clock.now())

        def change(record: ApiKeyRecord) -> ApiKeyRecord:
            _refuse_revoked(record)
            return attrs.evolve(record, **changes) if changes else record  # type: ignore[arg-type]

        key = await self._update(key_id, change)
        log.info("api_key.limits_changed", key_id=key.id, fields=sorted(changes))
        return key

    async def rotate(
        self, key_id: str, *, grace_seconds: float | None = None, idempotency_key: str | None = None
    ) -> KeyRotation:
        """Give the key a new secret at once; the key id and everything else stay.

        Args:
            key_id: the key to rotate.
            grace_seconds: how long the replaced secret keeps working (default: the service's
                ``rotation_grace``; ``0``: dead at once, for a leaked key). Only one old secret is
                kept: rotating again ends the previous grace period.
            idempotency_key: 16-200 ASCII characters (use a random UUID). Retrying with the same
                value returns the *same* new secret without rotating again (as long as no other
                rotation happened since). The new secret is then derived with HKDF-SHA256 from the
                pepper, the key id, the rotation counter and this value, so a retry recomputes it;
                only an HMAC of the idempotency key is stored, never the key itself.

        Raises:
            NotFoundError: ``api_key.not_found``.
            ConflictError: ``api_key.revoked_immutable`` for a revoked key,
                ``api_key.concurrent_update`` if other changes kept winning.
            ValidationError: ``api_key.invalid_field`` / ``api_key.invalid_idempotency_key``.
        """
        key_id = _check_key_id(key_id)
        grace = (
            self._rotation_grace
            if grace_seconds is None
            else self._check_seconds(grace_seconds, "grace_seconds")
        )
        idem = None if idempotency_key is None else self._check_idempotency_key(idempotency_key)
        idem_digest = None if idem is None else self._idempotency_digest(key_id, idem)
        for _ in range(_MAX_CAS_ATTEMPTS):
            record = await self._load(key_id)
            _refuse_revoked(record)
            if (
                idem is not None
                and idem_digest is not None
                and record.rotation_idempotency_digest is not None
                and _compare(record.rotation_idempotency_digest, idem_digest)
            ):
                secret = self._derive_secret(key_id, record.rotation_counter, idem)
                if not _compare(self._digest(secret), record.digest):
                    raise ConflictError("api_key.idempotency_mismatch", key_id=key_id)
                log.info("api_key.rotation_replayed", key_id=key_id)
                return KeyRotation(
                    key=_to_key(record),
                    secret=secret,
                    previous_valid_until=record.previous_valid_until,
                    replayed=True,
                )
            counter = record.rotation_counter + 1
            secret = generate_key() if idem is None else self._derive_secret(key_id, counter, idem)
            now = self._clock.now()
            grace_end = now + timedelta(seconds=grace) if grace > 0 else None
            updated = attrs.evolve(
                record,
                digest=self._digest(secret),
                hint=key_hint(secret),
                previous_digest=record.digest if grace_end is not None else None,
                previous_valid_until=grace_end,
                rotation_counter=counter,
                rotation_idempotency_digest=idem_digest,
                version=record.version + 1,
                updated_at=now,
            )
            if await self._store.update(updated, expected_version=record.version):
                await self._changed(key_id)
                log.info("api_key.rotated", key_id=key_id, grace_seconds=grace, rotation=counter)
                return KeyRotation(key=_to_key(updated), secret=secret, previous_valid_until=grace_end)
        raise ConflictError("api_key.concurrent_update", key_id=key_id)

    async def get(self, key_id: str) -> ApiKey:
        """The key with *key_id*.

        Raises:
            NotFoundError: ``api_key.not_found``.
        """
        return _to_key(await self._load(_check_key_id(key_id)))

    async def list(
        self, *, owner_id: str | None = None, team_id: str | None = None, include_revoked: bool = False
    ) -> builtins.list[ApiKey]:
        """Keys matching every given filter (revoked ones only with *include_revoked*), oldest first."""
        records = await self._store.list(owner_id=owner_id, team_id=team_id, include_revoked=include_revoked)
        return [_to_key(r) for r in records]

    async def ping(self) -> None:
        """Raise ``UnavailableError`` if the key store cannot be reached."""
        await self._store.ping()


class _Change(Protocol):
    def __call__(self, record: ApiKeyRecord, /) -> ApiKeyRecord: ...


def _refuse_revoked(record: ApiKeyRecord) -> None:
    if record.revoked_at is not None:
        raise ConflictError("api_key.revoked_immutable", key_id=record.id)
