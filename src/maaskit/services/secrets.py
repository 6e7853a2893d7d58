"""Secrets at rest: AES-256-GCM envelopes under a master key, with master-key rotation.

Example::

    from maaskit.services.secrets import DefaultSecretService, MasterKey
    from maaskit.storage.memory.secrets import MemorySecretStore

    master = MasterKey.from_bytes(bytes.fromhex(os.environ["APP_MASTER_KEY"]), key_id="2026-01")
    secrets_ = DefaultSecretService(MemorySecretStore(), master)
    await secrets_.store("upstream/openai", "sk-...")
    key = await secrets_.retrieve("upstream/openai")            # b"sk-..."

    new = MasterKey.random(key_id="2026-07")                     # keep it somewhere safe first!
    report = await secrets_.rotate_master_key(new)               # re-encrypts every secret

Cryptography (all through the ``cryptography`` package; nothing home-made):

* **Cipher**: AES-256-GCM (``AESGCM``) with a fresh random 96-bit nonce for every write.
* **Associated data** binds the envelope header (version, KDF, key id) and the secret's **name**:
  a ciphertext copied to another name, or a header edited, fails authentication.
* **Keys**: the master key is never used directly. A sub-key is derived with HKDF-SHA256
  (``info = "maaskit/secrets/v1/" + key_id``). A raw master key must be 32 random bytes. A
  passphrase master key is first stretched with argon2id (``argon2-cffi``'s ``hash_secret_raw``,
  default t=3, 64 MiB, p=4) or PBKDF2-HMAC-SHA256 with at least 600,000 iterations, computed
  **once** when the :class:`MasterKey` is built, with a configured salt.
* **Envelope** (version 1)::

      0x01 | kdf id (u8) | len(key id) (u8) | key id | len(kdf params) (u16) | kdf params
           | nonce (12) | ciphertext + tag (16)

  KDF ids: 1 = HKDF from a random key, 2 = argon2id passphrase, 3 = PBKDF2 passphrase; the params
  hold the cost parameters and salt, so an envelope says how its key was made.
* **Integrity**: a tampered, truncated or swapped envelope raises ``InternalError("secret.integrity")``
  and never returns plaintext; no ``cryptography`` exception escapes.
* **Rotation**: :meth:`SecretService.rotate_master_key` makes the new key current and re-encrypts,
  row by row, every secret still under another key id (each row is its own compare-and-set
  write). It is safe to interrupt and run again: build the service with the new key and the old
  one in ``previous_keys`` (both are known during rotation) and call it again.
"""

from __future__ import annotations

import hmac
import os
import re
import struct
import unicodedata
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import attrs
import structlog
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from maaskit.clock import Clock, SystemClock
from maaskit.errors import InternalError, NotFoundError, ValidationError
from maaskit.storage.ports.secrets import SecretRecord, SecretStore

__all__ = [
    "ENVELOPE_VERSION",
    "KDF_ARGON2ID",
    "KDF_HKDF",
    "KDF_PBKDF2",
    "MAX_NAME_LENGTH",
    "MAX_SECRET_BYTES",
    "MIN_PBKDF2_ITERATIONS",
    "DefaultSecretService",
    "MasterKey",
    "RotationReport",
    "SecretService",
    "aes_gcm_decrypt",
    "aes_gcm_encrypt",
    "check_name",
]

log = structlog.get_logger(__name__)

#: The envelope format version this module writes.
ENVELOPE_VERSION = 1
#: KDF id: a random 32-byte master key, HKDF-SHA256 to the sub-key.
KDF_HKDF = 1
#: KDF id: a passphrase stretched with argon2id, then HKDF-SHA256.
KDF_ARGON2ID = 2
#: KDF id: a passphrase stretched with PBKDF2-HMAC-SHA256, then HKDF-SHA256.
KDF_PBKDF2 = 3
#: The fewest PBKDF2 iterations accepted (OWASP 2023 for PBKDF2-HMAC-SHA256).
MIN_PBKDF2_ITERATIONS = 600_000
#: Longest secret name, in characters.
MAX_NAME_LENGTH = 256
#: Largest secret accepted by default.
MAX_SECRET_BYTES = 1024 * 1024

_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_BYTES = 32
_MIN_SALT_BYTES = 16
_MIN_PASSPHRASE_CHARS = 12
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_AAD_PREFIX = b"maaskit-secret\x00"
_HKDF_INFO = b"maaskit/secrets/v1/"


def _integrity() -> InternalError:
    return InternalError("secret.integrity")


def aes_gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM encryption (the primitive layer; callers normally use :class:`DefaultSecretService`).

    Args:
        key: 32 bytes.
        nonce: 12 bytes; never reuse one with the same key.
        plaintext: the data.
        associated_data: authenticated, not encrypted.

    Returns:
        ciphertext followed by the 16-byte tag.
    """
    if len(key) != _KEY_BYTES or len(nonce) != _NONCE_BYTES:
        raise ValidationError(
            "secret.invalid_key", reason="AES-256-GCM needs a 32-byte key and a 12-byte nonce"
        )
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def aes_gcm_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM decryption; any authentication failure is ``InternalError("secret.integrity")``."""
    if len(key) != _KEY_BYTES or len(nonce) != _NONCE_BYTES:
        raise ValidationError(
            "secret.invalid_key", reason="AES-256-GCM needs a 32-byte key and a 12-byte nonce"
        )
    if len(ciphertext) < _TAG_BYTES:
        raise _integrity()
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data)
    except InvalidTag:
        raise _integrity() from None


def _hkdf(root: bytes, key_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=_HKDF_INFO + key_id.encode()
    ).derive(root)


class MasterKey:
    """The root of secret encryption, with its key id and the KDF that produced it.

    Build it with :meth:`random`, :meth:`from_bytes` or :meth:`from_passphrase`. The key material is
    never shown by ``repr`` or ``str``. The data key is derived once, at construction.
    """

    __slots__ = ("_aead", "_fingerprint", "kdf_id", "kdf_params", "key_id")

    def __init__(self, root: bytes, *, key_id: str, kdf_id: int = KDF_HKDF, kdf_params: bytes = b"") -> None:
        if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
            raise ValidationError("secret.invalid_key", reason="key_id must match [A-Za-z0-9._-]{1,64}")
        if not isinstance(root, bytes) or len(root) < _KEY_BYTES:
            raise ValidationError(
                "secret.weak_master_key", reason="a master key needs at least 32 random bytes"
            )
        if kdf_id == KDF_HKDF and len(set(root)) < 10:
            raise ValidationError("secret.weak_master_key", reason="the master key does not look random")
        if len(kdf_params) > 0xFFFF:
            raise ValidationError("secret.invalid_key", reason="KDF parameters too long")
        self.key_id = key_id
        self.kdf_id = kdf_id
        self.kdf_params = kdf_params
        data_key = _hkdf(root, key_id)
        self._aead = AESGCM(data_key)
        self._fingerprint = hmac.new(data_key, b"fingerprint", "sha256").digest()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r}, kdf_id={self.kdf_id})"

    __str__ = __repr__

    @classmethod
    def random(cls, *, key_id: str) -> MasterKey:
        """A new random 32-byte master key. Store its material first: see :meth:`generate_bytes`."""
        return cls(os.urandom(_KEY_BYTES), key_id=key_id)

    @staticmethod
    def generate_bytes() -> bytes:
        """32 random bytes to keep in a secret manager and pass to :meth:`from_bytes`."""
        return os.urandom(_KEY_BYTES)

    @classmethod
    def from_bytes(cls, key: bytes, *, key_id: str) -> MasterKey:
        """A master key from at least 32 random bytes (e.g. ``bytes.fromhex(env_value)``)."""
        if not isinstance(key, bytes | bytearray):
            raise ValidationError("secret.weak_master_key", reason="the master key must be bytes")
        return cls(bytes(key), key_id=key_id)

    @classmethod
    def from_passphrase(
        cls,
        passphrase: str | bytes,
        *,
        salt: bytes,
        key_id: str,
        kdf: Literal["argon2id", "pbkdf2"] = "argon2id",
        time_cost: int = 3,
        memory_cost: int = 65536,
        parallelism: int = 4,
        iterations: int = MIN_PBKDF2_ITERATIONS,
    ) -> MasterKey:
        """A master key stretched from a passphrase (once, here).

        Args:
            passphrase: at least 12 characters.
            salt: at least 16 random bytes, stored next to the configuration (not secret, but fixed).
            key_id: the key's id.
            kdf: ``"argon2id"`` (default) or ``"pbkdf2"``.
            time_cost: argon2id passes (>= 2).
            memory_cost: argon2id memory in KiB (>= 19 MiB).
            parallelism: argon2id lanes.
            iterations: PBKDF2-HMAC-SHA256 iterations (>= 600,000).

        Raises:
            ValidationError: ``secret.weak_master_key`` for a short passphrase or salt or weak costs.
        """
        secret = passphrase.encode() if isinstance(passphrase, str) else passphrase
        if not isinstance(secret, bytes) or len(secret) < _MIN_PASSPHRASE_CHARS:
            raise ValidationError(
                "secret.weak_master_key", reason="a passphrase needs at least 12 characters"
            )
        if not isinstance(salt, bytes) or len(salt) < _MIN_SALT_BYTES or len(salt) > 255:
            raise ValidationError("secret.weak_master_key", reason="the salt needs 16 to 255 random bytes")
        if kdf == "argon2id":
            if time_cost < 2 or memory_cost < 19456 or not 1 <= parallelism <= 255:
                raise ValidationError(
                    "secret.weak_master_key", reason="argon2id needs t >= 2 and at least 19 MiB of memory"
                )
            root = hash_secret_raw(
                secret, salt, time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism,
                hash_len=_KEY_BYTES, type=Type.ID,
            )  # fmt: skip
            params = struct.pack(">IIB", time_cost, memory_cost, parallelism) + salt
            return cls(root, key_id=key_id, kdf_id=KDF_ARGON2ID, kdf_params=params)
        if kdf == "pbkdf2":
            if iterations < MIN_PBKDF2_ITERATIONS:
                raise ValidationError(
                    "secret.weak_master_key", reason="PBKDF2 needs at least 600,000 iterations"
                )
            root = PBKDF2HMAC(
                algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=salt, iterations=iterations
            ).derive(secret)
            params = struct.pack(">I", iterations) + salt
            return cls(root, key_id=key_id, kdf_id=KDF_PBKDF2, kdf_params=params)
        raise ValidationError("secret.invalid_key", reason="kdf must be 'argon2id' or 'pbkdf2'")

    def same_key(self, other: MasterKey) -> bool:
        """Whether *other* has the same key id and derives the same data key (constant time)."""
        return self.key_id == other.key_id and hmac.compare_digest(self._fingerprint, other._fingerprint)

    def _header(self) -> bytes:
        kid = self.key_id.encode()
        return (
            struct.pack(">BBB", ENVELOPE_VERSION, self.kdf_id, len(kid))
            + kid
            + struct.pack(">H", len(self.kdf_params))
            + self.kdf_params
        )

    def seal(self, name: str, plaintext: bytes) -> bytes:
        """Encrypt *plaintext* for the secret *name* into a version-1 envelope."""
        header = self._header()
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, plaintext, _aad(header, name))

    def open(self, name: str, header: bytes, body: bytes) -> bytes:
        """Decrypt an envelope already split by :func:`_split` (integrity errors are typed)."""
        if header != self._header():
            raise _integrity()
        nonce, ciphertext = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, _aad(header, name))
        except InvalidTag:
            raise _integrity() from None


def _aad(header: bytes, name: str) -> bytes:
    return _AAD_PREFIX + header + name.encode("utf-8")


def _split(envelope: bytes) -> tuple[str, bytes, bytes]:
    """``(key_id, header, nonce + ciphertext + tag)``; a malformed envelope is ``secret.integrity``."""
    try:
        version, _kdf, kid_len = struct.unpack_from(">BBB", envelope, 0)
        if version != ENVELOPE_VERSION:
            raise _integrity()
        kid = envelope[3 : 3 + kid_len].decode("ascii")
        (params_len,) = struct.unpack_from(">H", envelope, 3 + kid_len)
    except (struct.error, UnicodeDecodeError):
        raise _integrity() from None
    header_len = 3 + kid_len + 2 + params_len
    body = envelope[header_len:]
    if len(kid) != kid_len or len(body) < _NONCE_BYTES + _TAG_BYTES:
        raise _integrity()
    return kid, envelope[:header_len], body


def check_name(name: object) -> str:
    """Validate a secret name: 1-256 characters, no control characters or lone surrogates."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME_LENGTH
        or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)
    ):
        raise ValidationError("secret.invalid_name", max_length=MAX_NAME_LENGTH)
    return name


@attrs.frozen
class RotationReport:
    """What :meth:`SecretService.rotate_master_key` did.

    Attributes:
        key_id: the new current key id.
        rotated: secrets re-encrypted by this run.
        remaining: secrets still under another key (0 when complete; rerun to continue).
    """

    key_id: str
    rotated: int
    remaining: int


@runtime_checkable
class SecretService(Protocol):
    """Encrypted named secrets."""

    async def store(self, name: str, plaintext: bytes | str) -> None:
        """Encrypt and store (replacing any previous value)."""
        ...

    async def retrieve(self, name: str) -> bytes:
        """Decrypt and return the secret."""
        ...

    async def delete(self, name: str) -> bool:
        """Delete; ``True`` when it existed."""
        ...

    async def list_names(self) -> list[str]:
        """Every secret's name, sorted."""
        ...

    async def rotate_master_key(self, new_master: MasterKey, *, batch_size: int = 100) -> RotationReport:
        """Make *new_master* current and re-encrypt every secret under it."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...


class DefaultSecretService:
    """The default :class:`SecretService`.

    Args:
        store: where envelopes live (memory or SQL).
        master_key: the current master key (new writes are under it).
        previous_keys: older master keys whose envelopes may still exist (during a rotation).
        clock: time source for ``updated_at``.
        max_secret_bytes: largest plaintext accepted (default 1 MiB).
    """

    def __init__(
        self,
        store: SecretStore,
        master_key: MasterKey,
        *,
        previous_keys: Sequence[MasterKey] = (),
        clock: Clock | None = None,
        max_secret_bytes: int = MAX_SECRET_BYTES,
    ) -> None:
        self._store = store
        self._keys: dict[str, MasterKey] = {}
        for key in (*previous_keys, master_key):
            self._add_key(key)
        self._current = master_key
        self._clock: Clock = clock or SystemClock()
        self._max = max_secret_bytes

    def __repr__(self) -> str:
        return f"DefaultSecretService(store={self._store!r}, key_id={self._current.key_id!r})"

    def _add_key(self, key: MasterKey) -> None:
        if not isinstance(key, MasterKey):
            raise ValidationError("secret.invalid_key", reason="expected a MasterKey")
        known = self._keys.get(key.key_id)
        if known is not None and not known.same_key(key):
            raise ValidationError("secret.key_id_conflict", key_id=key.key_id)
        self._keys[key.key_id] = key

    @property
    def key_id(self) -> str:
        """The id of the current master key."""
        return self._current.key_id

    def _open(self, name: str, envelope: bytes) -> bytes:
        kid, header, body = _split(envelope)
        key = self._keys.get(kid)
        if key is None:
            raise InternalError("secret.unknown_key", key_id=kid)
        return key.open(name, header, body)

    async def store(self, name: str, plaintext: bytes | str) -> None:
        """Encrypt *plaintext* (``str`` is UTF-8 encoded) under the current key and store it.

        Raises:
            ValidationError: ``secret.invalid_name``, ``secret.invalid_value``, ``secret.too_large``.
        """
        check_name(name)
        if isinstance(plaintext, str):
            try:
                data = plaintext.encode("utf-8")
            except UnicodeEncodeError:
                raise ValidationError("secret.invalid_value") from None
        elif isinstance(plaintext, bytes | bytearray | memoryview):
            data = bytes(plaintext)
        else:
            raise ValidationError("secret.invalid_value")
        if len(data) > self._max:
            raise ValidationError("secret.too_large", limit=self._max)
        envelope = self._current.seal(name, data)
        await self._store.put(
            SecretRecord(
                name=name, envelope=envelope, key_id=self._current.key_id, updated_at=self._clock.now()
            )
        )
        log.info("secret_stored", name=name, key_id=self._current.key_id)

    async def retrieve(self, name: str) -> bytes:
        """Decrypt the secret *name*.

        Raises:
            NotFoundError: ``secret.not_found``.
            InternalError: ``secret.integrity`` (tampered, truncated or moved envelope),
                ``secret.unknown_key`` (its master key is not configured).
        """
        check_name(name)
        record = await self._store.get(name)
        if record is None:
            raise NotFoundError("secret.not_found", name=name)
        try:
            return self._open(name, record.envelope)
        except InternalError as exc:
            log.error("secret_unreadable", name=name, code=exc.code)
            raise

    async def delete(self, name: str) -> bool:
        """Delete the secret *name*; ``True`` when it existed."""
        check_name(name)
        deleted = await self._store.delete(name)
        if deleted:
            log.info("secret_deleted", name=name)
        return deleted

    async def list_names(self) -> list[str]:
        """Every name, sorted (no values are decrypted)."""
        return await self._store.list_names()

    async def rotate_master_key(self, new_master: MasterKey, *, batch_size: int = 100) -> RotationReport:
        """Make *new_master* the current key and re-encrypt every secret still under another key.

        Each secret is re-encrypted and written on its own (compare-and-set on the old envelope), so
        an interruption leaves every row readable with one of the known keys; run it again (with the
        old key in ``previous_keys``) to finish. Calling it with the already-current key just
        resumes.

        Raises:
            ValidationError: ``secret.key_id_conflict`` (same id, different material), bad batch size.
            InternalError: ``secret.integrity`` / ``secret.unknown_key`` for a row no known key opens
                (rotation stops there; nothing is lost).
        """
        if batch_size < 1:
            raise ValidationError("secret.invalid_batch_size")
        self._add_key(new_master)
        self._current = self._keys[new_master.key_id]
        rotated = 0
        while True:
            names = await self._store.names_not_under(self._current.key_id, batch_size)
            progress = 0
            for name in names:
                record = await self._store.get(name)
                if record is None or record.key_id == self._current.key_id:
                    continue
                plaintext = self._open(name, record.envelope)
                new_record = SecretRecord(
                    name=name,
                    envelope=self._current.seal(name, plaintext),
                    key_id=self._current.key_id,
                    updated_at=self._clock.now(),
                )
                if await self._store.replace_if(name, record.envelope, new_record):
                    rotated += 1
                    progress += 1
            if not names or progress == 0:
                break
        remaining = len(await self._store.names_not_under(self._current.key_id, 1_000_000))
        log.info(
            "secrets_master_key_rotated", key_id=self._current.key_id, rotated=rotated, remaining=remaining
        )
        return RotationReport(key_id=self._current.key_id, rotated=rotated, remaining=remaining)

    async def ping(self) -> None:
        """Check the store."""
        await self._store.ping()
