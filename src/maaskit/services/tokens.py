"""JSON Web Tokens: short-lived access tokens and rotating refresh tokens (pyjwt).

Example::

    from maaskit.services.tokens import DefaultTokenService, SigningKey
    from maaskit.storage.memory.tokens import MemoryTokenStore

    key = SigningKey.hs256(secrets.token_bytes(32), kid="2026-01")
    tokens = DefaultTokenService([key], MemoryTokenStore(), issuer="https://gw.example", audience="gw-api")
    pair = await tokens.issue_pair("user-1", scopes=["chat"])
    claims = await tokens.validate_access(pair.access.token)      # Claims(subject="user-1", ...)
    pair = await tokens.refresh(pair.refresh.token)                # the old refresh token is spent

Rules (RFC 8725, RFC 9068):

* **Pinned algorithms.** Every :class:`SigningKey` has one algorithm. A token is verified with the
  key its ``kid`` header names, and only with that key's algorithm, so ``alg: none`` and HS/RS key
  confusion are refused. An unknown or missing ``kid`` is refused. ``jku``, ``x5u`` and ``jwk``
  headers are never followed (maaskit has no code path that reads them).
* **Required claims** ``exp``, ``iat``, ``jti``, ``sub``, ``iss``, ``aud``; the issuer and audience must
  match; times are checked against the injected :class:`~maaskit.clock.Clock` with a 30 s leeway
  (``exp`` in the past, ``iat``/``nbf`` in the future are refused).
* **Token types.** Access tokens carry ``token_use: "access"`` and the header ``typ: at+jwt``;
  refresh tokens carry ``token_use: "refresh"`` and have the issuer itself as audience. A refresh or
  ID token is never accepted as an access token.
* **Refresh families.** Each login starts a family; every refresh spends the presented refresh
  token and issues a new one. Presenting an already spent refresh token revokes the whole family
  (RFC 9700 §4.14.2), and of two simultaneous uses exactly one succeeds (the store does an atomic
  compare-and-set).
* **Revocation.** :meth:`TokenService.revoke` puts a ``jti`` on a deny list whose entries expire
  with the token; :meth:`TokenService.revoke_subject` revokes every refresh family of a user
  (password change, disable, delete). Access tokens already issued stay valid until they expire
  (10 minutes by default) unless their ``jti`` is revoked.
* **Size.** Tokens over 8 KiB are refused before any parsing.
* Every failure is an :class:`~maaskit.errors.UnauthenticatedError` with a ``tokens.*`` code; the
  token never appears in an error, a log line or a repr.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from maaskit.clock import Clock, SystemClock
from maaskit.errors import MaasError, UnauthenticatedError, ValidationError
from maaskit.storage.ports.tokens import RefreshFamily, RotateOutcome, TokenStore

__all__ = [
    "ACCESS",
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_BYTES",
    "REFRESH",
    "RESERVED_CLAIMS",
    "Claims",
    "DefaultTokenService",
    "IssuedToken",
    "SigningKey",
    "TokenPair",
    "TokenService",
]

log = structlog.get_logger(__name__)

#: ``token_use`` of access tokens.
ACCESS = "access"
#: ``token_use`` of refresh tokens.
REFRESH = "refresh"
#: Longest token accepted, in bytes; longer ones are refused before parsing.
MAX_TOKEN_BYTES = 8192
#: Clock skew tolerated on ``exp``, ``iat`` and ``nbf``.
DEFAULT_LEEWAY = timedelta(seconds=30)
#: Claims maaskit sets itself; ``extra_claims`` may not override them.
RESERVED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "token_use", "scope", "roles", "fid", "typ", "azp"}
)

_REQUIRED = ["exp", "iat", "jti", "sub", "iss", "aud"]
_KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MIN_HMAC_BYTES = 32
_MIN_RSA_BITS = 2048
_ACCESS_TYP = "at+jwt"
_ALGORITHMS = get_default_algorithms()
_HEADER_CACHE_SIZE = 64

Algorithm = Literal["HS256", "ES256", "EdDSA", "RS256"]


def _weak(kid: str, reason: str) -> ValidationError:
    return ValidationError("tokens.weak_key", kid=kid, reason=reason)


@attrs.frozen
class SigningKey:
    """One JWT key: its ``kid``, its single algorithm and the key material.

    Build it with :meth:`hs256`, :meth:`from_private_key` or :meth:`from_public_key` (a
    verification-only key, e.g. a retired key whose tokens are still in flight). Weak material is
    refused at construction with ``ValidationError("tokens.weak_key")``: HMAC secrets shorter than
    32 bytes (or visibly not random), RSA keys under 2048 bits, EC keys not on P-256.

    Attributes:
        kid: the key id written into every token's header (``[A-Za-z0-9._-]{1,64}``).
        algorithm: ``HS256``, ``ES256``, ``EdDSA`` or ``RS256``.
        signing_key: the HMAC secret or private key object; ``None`` for a verification-only key.
        verifying_key: the HMAC secret or public key object.
    """

    kid: str
    algorithm: Algorithm
    signing_key: Any = attrs.field(repr=False)
    verifying_key: Any = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _KID_RE.match(self.kid):
            raise ValidationError("tokens.invalid_key", kid="?", reason="kid must match [A-Za-z0-9._-]{1,64}")
        key = self.verifying_key
        if self.algorithm == "HS256":
            if not isinstance(key, bytes) or self.signing_key != key:
                raise ValidationError("tokens.invalid_key", kid=self.kid, reason="HS256 needs a bytes secret")
            if len(key) < _MIN_HMAC_BYTES:
                raise _weak(self.kid, "HS256 secrets need at least 32 random bytes")
            if len(set(key)) < 10:
                raise _weak(self.kid, "the HS256 secret does not look random")
        elif self.algorithm == "ES256":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValidationError("tokens.invalid_key", kid=self.kid, reason="ES256 needs an EC key")
            if not isinstance(key.curve, ec.SECP256R1):
                raise _weak(self.kid, "ES256 needs a P-256 key")
        elif self.algorithm == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                raise ValidationError("tokens.invalid_key", kid=self.kid, reason="EdDSA needs an Ed25519 key")
        elif self.algorithm == "RS256":
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValidationError("tokens.invalid_key", kid=self.kid, reason="RS256 needs an RSA key")
            if key.key_size < _MIN_RSA_BITS:
                raise _weak(self.kid, "RSA keys need at least 2048 bits")
        else:
            raise ValidationError("tokens.invalid_key", kid=self.kid, reason="unsupported algorithm")

    @property
    def can_sign(self) -> bool:
        """Whether this key holds private material (verification-only keys do not)."""
        return self.signing_key is not None

    @property
    def is_symmetric(self) -> bool:
        """``True`` for HS256 (never published in the JWKS document)."""
        return self.algorithm == "HS256"

    @classmethod
    def hs256(cls, secret: bytes, *, kid: str) -> SigningKey:
        """An HMAC-SHA256 key from at least 32 random bytes (``secrets.token_bytes(32)``)."""
        if not isinstance(secret, bytes | bytearray):
            raise ValidationError("tokens.invalid_key", kid=kid, reason="HS256 needs a bytes secret")
        material = bytes(secret)
        return cls(kid=kid, algorithm="HS256", signing_key=material, verifying_key=material)

    @classmethod
    def from_private_key(cls, key: Any, *, kid: str, password: bytes | None = None) -> SigningKey:
        """A signing key from a ``cryptography`` private key object or PEM text/bytes.

        The algorithm follows from the key type: EC P-256 -> ES256, Ed25519 -> EdDSA,
        RSA (>= 2048 bits) -> RS256.
        """
        if isinstance(key, str | bytes):
            data = key.encode() if isinstance(key, str) else key
            try:
                key = serialization.load_pem_private_key(data, password=password)
            except (ValueError, TypeError):
                raise ValidationError("tokens.invalid_key", kid=kid, reason="not a PEM private key") from None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return cls(kid=kid, algorithm="ES256", signing_key=key, verifying_key=key.public_key())
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return cls(kid=kid, algorithm="EdDSA", signing_key=key, verifying_key=key.public_key())
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(kid=kid, algorithm="RS256", signing_key=key, verifying_key=key.public_key())
        raise ValidationError("tokens.invalid_key", kid=kid, reason="unsupported private key type")

    @classmethod
    def from_public_key(cls, key: Any, *, kid: str) -> SigningKey:
        """A verification-only key from a public key object or PEM (for a retired signing key)."""
        if isinstance(key, str | bytes):
            data = key.encode() if isinstance(key, str) else key
            try:
                key = serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                raise ValidationError("tokens.invalid_key", kid=kid, reason="not a PEM public key") from None
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls(kid=kid, algorithm="ES256", signing_key=None, verifying_key=key)
        if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return cls(kid=kid, algorithm="EdDSA", signing_key=None, verifying_key=key)
        if isinstance(key, rsa.RSAPublicKey):
            return cls(kid=kid, algorithm="RS256", signing_key=None, verifying_key=key)
        raise ValidationError("tokens.invalid_key", kid=kid, reason="unsupported public key type")

    def public_jwk(self) -> dict[str, Any] | None:
        """The public key as a JWK (with ``kid``, ``alg``, ``use``), or ``None`` for HS256."""
        if self.is_symmetric:
            return None
        jwk: dict[str, Any] = dict(_ALGORITHMS[self.algorithm].to_jwk(self.verifying_key, as_dict=True))
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk


def _tuple_of_str(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _readonly(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@attrs.frozen
class IssuedToken:
    """A freshly issued token.

    Attributes:
        token: the encoded JWT (a bearer secret: never log it).
        jti: its unique id (for :meth:`TokenService.revoke`).
        token_use: ``"access"`` or ``"refresh"``.
        subject: the ``sub`` claim.
        issued_at: ``iat``.
        expires_at: ``exp``.
        kid: the key that signed it.
        family_id: the refresh family (refresh tokens only).
    """

    token: str = attrs.field(repr=False)
    jti: str
    token_use: str
    subject: str
    issued_at: datetime
    expires_at: datetime
    kid: str
    family_id: str | None = None


@attrs.frozen
class TokenPair:
    """An access token and the refresh token that renews it."""

    access: IssuedToken
    refresh: IssuedToken


@attrs.frozen
class Claims:
    """The verified claims of a token.

    Attributes:
        subject: ``sub``.
        issuer: ``iss``.
        audience: ``aud`` as a tuple.
        jti: ``jti``.
        token_use: ``"access"`` or ``"refresh"``.
        issued_at: ``iat``.
        expires_at: ``exp``.
        scopes: the space-separated ``scope`` claim, split.
        roles: the ``roles`` claim.
        kid: the key that signed the token.
        family_id: ``fid`` (refresh tokens).
        extra: every other claim (``extra_claims`` at issue time).
    """

    subject: str
    issuer: str
    audience: tuple[str, ...] = attrs.field(converter=_tuple_of_str)
    jti: str
    token_use: str
    issued_at: datetime
    expires_at: datetime
    scopes: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=())
    roles: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=())
    kid: str = ""
    family_id: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, hash=False, converter=_readonly)


@runtime_checkable
class TokenService(Protocol):
    """Issue, validate, refresh and revoke JWTs."""

    def issue_access(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
        ttl: timedelta | None = None,
    ) -> IssuedToken:
        """Sign an access token for *subject* (pure computation: no store is touched)."""
        ...

    async def issue_refresh(
        self,
        subject: str,
        family_id: str | None = None,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
    ) -> IssuedToken:
        """Start a refresh family (or continue *family_id*) and sign its current refresh token."""
        ...

    async def issue_pair(
        self, subject: str, *, scopes: Iterable[str] = (), roles: Iterable[str] = ()
    ) -> TokenPair:
        """An access token plus the first refresh token of a new family (a login)."""
        ...

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend *refresh_token*: a new access token and the family's next refresh token."""
        ...

    async def validate_access(self, token: str) -> Claims:
        """Verify an access token (signature, claims, type, deny list) and return its claims."""
        ...

    def claims(self, token: str) -> Claims:
        """Verify any token of this service (access or refresh) without consulting the deny list."""
        ...

    async def revoke(self, jti: str, expires_at: datetime) -> None:
        """Deny-list *jti* until *expires_at*."""
        ...

    async def revoke_token(self, token: str) -> None:
        """Revoke a token you hold (logout): deny its ``jti``, and its family if it is a refresh token."""
        ...

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke one refresh family; ``True`` if it was live."""
        ...

    async def revoke_subject(self, subject: str) -> int:
        """Revoke every refresh family of *subject*; returns how many."""
        ...

    def jwks(self) -> dict[str, Any]:
        """The JWKS document with the public keys (asymmetric keys only)."""
        ...

    async def cleanup_expired(self) -> int:
        """Drop expired deny-list entries and families."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when the store cannot be reached."""
        ...


def _fail(code: str, **params: Any) -> UnauthenticatedError:
    return UnauthenticatedError(code, **params)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_subject(subject: Any) -> str:
    if not isinstance(subject, str) or not subject or len(subject) > 256:
        raise ValidationError("tokens.invalid_subject")
    return subject


def _check_names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValidationError("tokens.invalid_claim", claim=what, reason="expected a list of strings")
    out = tuple(values)
    for value in out:
        if not isinstance(value, str) or not value or " " in value or len(value) > 128:
            raise ValidationError(
                "tokens.invalid_claim", claim=what, reason="each entry is a word of 1-128 chars"
            )
    return out


class DefaultTokenService:
    """The default :class:`TokenService`.

    Args:
        keys: every key tokens may be signed with; ``kid`` values must be unique.
        store: the deny list and refresh families.
        issuer: the ``iss`` of every token and the only one accepted.
        audience: the ``aud`` of access tokens; one string or several (a token matches if it names any).
        clock: time source (default :class:`~maaskit.clock.SystemClock`).
        active_kid: the key that signs new tokens (default: the first key that can sign). The others
            still verify tokens they signed, which is how keys rotate.
        access_ttl: lifetime of access tokens (default 10 minutes).
        refresh_ttl: lifetime of each refresh token (default 14 days); every refresh slides it.
        leeway: tolerated clock skew (default 30 s).
        max_token_bytes: longer tokens are refused before parsing (default 8 KiB).
        check_revocation: consult the deny list in :meth:`validate_access` (default ``True``).
        verified_cache_size: how many verified tokens to remember (keyed by the whole token, expiry
            re-checked on every hit, deny list always consulted) so a bearer token presented again
            skips the signature check; ``0`` disables it.

    Raises:
        ValidationError: ``tokens.no_signing_key``, ``tokens.duplicate_kid``, ``tokens.invalid_config``.
    """

    def __init__(
        self,
        keys: Sequence[SigningKey],
        store: TokenStore,
        *,
        issuer: str,
        audience: str | Sequence[str],
        clock: Clock | None = None,
        active_kid: str | None = None,
        access_ttl: timedelta = timedelta(minutes=10),
        refresh_ttl: timedelta = timedelta(days=14),
        leeway: timedelta = DEFAULT_LEEWAY,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        check_revocation: bool = True,
        verified_cache_size: int = 10_000,
    ) -> None:
        by_kid: dict[str, SigningKey] = {}
        for key in keys:
            if not isinstance(key, SigningKey):
                raise ValidationError("tokens.invalid_config", reason="keys must be SigningKey objects")
            if key.kid in by_kid:
                raise ValidationError("tokens.duplicate_kid", kid=key.kid)
            by_kid[key.kid] = key
        if active_kid is None:
            active_kid = next((k.kid for k in keys if k.can_sign), None)
        if active_kid is None or active_kid not in by_kid or not by_kid[active_kid].can_sign:
            raise ValidationError("tokens.no_signing_key")
        if not issuer:
            raise ValidationError("tokens.invalid_config", reason="issuer must not be empty")
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValidationError("tokens.invalid_config", reason="audience must not be empty")
        for name, ttl in (("access_ttl", access_ttl), ("refresh_ttl", refresh_ttl)):
            if ttl <= timedelta(0):
                raise ValidationError("tokens.invalid_config", reason=f"{name} must be positive")
        self._keys = by_kid
        self._active = by_kid[active_kid]
        self._store = store
        self._issuer = issuer
        self._audiences = audiences
        self._aud_claim: str | list[str] = audiences[0] if len(audiences) == 1 else list(audiences)
        self._any_audience = (*audiences, issuer)
        self._clock: Clock = clock or SystemClock()
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._leeway = leeway.total_seconds()
        self._max_bytes = max_token_bytes
        self._check_revocation = check_revocation
        # Parsed headers of recently seen tokens, keyed by the header segment: the few distinct
        # headers this service issues are parsed once. Only the kid lookup uses it; jwt.decode
        # still parses and verifies the whole token.
        self._header_cache: dict[str, dict[str, Any]] = {}
        # Claims of tokens that passed every signature and claim check, keyed by the exact token
        # (never a prefix): a repeated bearer token costs a dict lookup plus the time checks. The
        # deny list is still consulted on every call; 0 disables the cache.
        if verified_cache_size < 0:
            raise ValidationError("tokens.invalid_config", reason="verified_cache_size must be >= 0")
        self._verified_max = verified_cache_size
        self._verified: dict[str, tuple[Claims, dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return (
            f"DefaultTokenService(issuer={self._issuer!r}, active_kid={self._active.kid!r}, "
            f"kids={sorted(self._keys)!r})"
        )

    # -- issuing -----------------------------------------------------------------------------

    def _sign(self, payload: dict[str, Any], typ: str) -> str:
        key = self._active
        return jwt.encode(
            payload, key.signing_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": typ}
        )

    def issue_access(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        extra_claims: Mapping[str, Any] | None = None,
        ttl: timedelta | None = None,
    ) -> IssuedToken:
        """Sign an access token.

        Raises:
            ValidationError: ``tokens.invalid_subject``, ``tokens.invalid_claim``,
                ``tokens.reserved_claim`` (an extra claim maaskit sets itself), ``tokens.invalid_ttl``.
        """
        _check_subject(subject)
        scope_list = _check_names(scopes, "scope")
        role_list = _check_names(roles, "roles")
        lifetime = self._access_ttl if ttl is None else ttl
        if lifetime <= timedelta(0):
            raise ValidationError("tokens.invalid_ttl")
        payload: dict[str, Any] = {}
        for name, value in (extra_claims or {}).items():
            if name in RESERVED_CLAIMS:
                raise ValidationError("tokens.reserved_claim", claim=name)
            payload[name] = value
        iat = int(self._clock.time())
        exp = iat + max(1, int(lifetime.total_seconds()))
        jti = secrets.token_urlsafe(18)
        payload.update(
            iss=self._issuer, sub=subject, aud=self._aud_claim, iat=iat, exp=exp, jti=jti, token_use=ACCESS
        )
        if scope_list:
            payload["scope"] = " ".join(scope_list)
        if role_list:
            payload["roles"] = list(role_list)
        try:
            token = self._sign(payload, _ACCESS_TYP)
        except TypeError:
            raise ValidationError(
                "tokens.invalid_claim", claim="extra_claims", reason="not JSON serialisable"
            ) from None
        return IssuedToken(
            token=token,
            jti=jti,
            token_use=ACCESS,
            subject=subject,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            kid=self._active.kid,
        )

    def _refresh_token(
        self, subject: str, family_id: str, scopes: tuple[str, ...], roles: tuple[str, ...]
    ) -> IssuedToken:
        iat = int(self._clock.time())
        exp = iat + max(1, int(self._refresh_ttl.total_seconds()))
        jti = secrets.token_urlsafe(18)
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._issuer,
            "iat": iat,
            "exp": exp,
            "jti": jti,
            "token_use": REFRESH,
            "fid": family_id,
        }
        if scopes:
            payload["scope"] = " ".join(scopes)
        if roles:
            payload["roles"] = list(roles)
        return IssuedToken(
            token=self._sign(payload, "JWT"),
            jti=jti,
            token_use=REFRESH,
            subject=subject,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
            kid=self._active.kid,
            family_id=family_id,
        )

    async def issue_refresh(
        self,
        subject: str,
        family_id: str | None = None,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
    ) -> IssuedToken:
        """Start a new refresh family, or make a new token the current one of a live *family_id*.

        Raises:
            ValidationError: bad subject, scopes or roles.
            UnauthenticatedError: ``tokens.revoked`` when *family_id* is unknown, expired or revoked.
        """
        _check_subject(subject)
        scope_list = _check_names(scopes, "scope")
        role_list = _check_names(roles, "roles")
        now = self._clock.now()
        if family_id is None:
            family_id = "fam_" + secrets.token_urlsafe(16)
            issued = self._refresh_token(subject, family_id, scope_list, role_list)
            await self._store.create_family(
                RefreshFamily(
                    family_id=family_id,
                    subject=subject,
                    current_jti=issued.jti,
                    created_at=now,
                    expires_at=issued.expires_at,
                )
            )
            return issued
        family = await self._store.get_family(family_id)
        if family is None or family.subject != subject:
            raise _fail("tokens.revoked")
        issued = self._refresh_token(subject, family_id, scope_list, role_list)
        if not await self._store.set_current(family_id, issued.jti, issued.expires_at, now):
            raise _fail("tokens.revoked")
        return issued

    async def issue_pair(
        self, subject: str, *, scopes: Iterable[str] = (), roles: Iterable[str] = ()
    ) -> TokenPair:
        """A login: an access token and the first refresh token of a new family."""
        scope_list = _check_names(scopes, "scope")
        role_list = _check_names(roles, "roles")
        access = self.issue_access(subject, scopes=scope_list, roles=role_list)
        refresh = await self.issue_refresh(subject, scopes=scope_list, roles=role_list)
        return TokenPair(access=access, refresh=refresh)

    # -- verifying ---------------------------------------------------------------------------

    def _decode(
        self, token: Any, audience: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any], SigningKey]:
        if isinstance(token, bytes):
            raw_len = len(token)
        elif isinstance(token, str):
            raw_len = len(token)  # characters >= 1 byte each: a cheap lower bound
            if raw_len <= self._max_bytes and not token.isascii():
                raise _fail("tokens.malformed")
        else:
            raise _fail("tokens.malformed")
        if raw_len > self._max_bytes:
            raise _fail("tokens.too_large", limit=self._max_bytes)
        header = self._header(token)
        try:
            kid = header.get("kid")
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise _fail("tokens.unknown_key")
            payload: dict[str, Any] = jwt.decode(
                token,
                key.verifying_key,
                algorithms=[key.algorithm],
                audience=list(audience),
                issuer=self._issuer,
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except MaasError:
            raise
        except jwt.InvalidAlgorithmError:
            raise _fail("tokens.invalid_algorithm") from None
        except jwt.InvalidSignatureError:
            raise _fail("tokens.invalid_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _fail("tokens.missing_claim", claim=str(exc.claim)[:32]) from None
        except jwt.InvalidAudienceError:
            raise _fail("tokens.invalid_audience") from None
        except jwt.InvalidIssuerError:
            raise _fail("tokens.invalid_issuer") from None
        except jwt.DecodeError:
            raise _fail("tokens.malformed") from None
        except jwt.PyJWTError:
            raise _fail("tokens.invalid") from None
        except Exception as exc:  # defensive: a parser bug must never become a 500 or leak the token
            log.warning("token_decode_failed", error_type=type(exc).__name__)
            raise _fail("tokens.invalid") from None
        self._check_times(payload)
        return header, payload, key

    def _header(self, token: str | bytes) -> dict[str, Any]:
        segment = token.partition(".")[0] if isinstance(token, str) else ""
        cached = self._header_cache.get(segment) if segment else None
        if cached is not None:
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except Exception:
            raise _fail("tokens.malformed") from None
        if segment and isinstance(header.get("kid"), str) and header["kid"] in self._keys:
            if len(self._header_cache) >= _HEADER_CACHE_SIZE:
                self._header_cache.clear()
            self._header_cache[segment] = header
        return header

    def _check_times(self, payload: Mapping[str, Any]) -> None:
        exp, iat, nbf = payload["exp"], payload["iat"], payload.get("nbf")
        if not _is_number(exp) or not _is_number(iat) or (nbf is not None and not _is_number(nbf)):
            raise _fail("tokens.malformed")
        now = self._clock.time()
        if exp <= now - self._leeway:
            raise _fail("tokens.expired")
        if iat > now + self._leeway or (nbf is not None and nbf > now + self._leeway):
            raise _fail("tokens.not_yet_valid")

    def _claims(self, payload: Mapping[str, Any], key: SigningKey) -> Claims:
        token_use = payload.get("token_use")
        if not isinstance(token_use, str):
            raise _fail("tokens.wrong_type")
        aud = payload["aud"]
        scope = payload.get("scope", "")
        roles = payload.get("roles", [])
        fid = payload.get("fid")
        if (
            not isinstance(scope, str)
            or not isinstance(roles, list)
            or not all(isinstance(r, str) for r in roles)
            or (fid is not None and not isinstance(fid, str))
        ):
            raise _fail("tokens.malformed")
        return Claims(
            subject=payload["sub"],
            issuer=payload["iss"],
            audience=(aud,) if isinstance(aud, str) else tuple(str(a) for a in aud),
            jti=payload["jti"],
            token_use=token_use,
            issued_at=datetime.fromtimestamp(payload["iat"], UTC),
            expires_at=datetime.fromtimestamp(payload["exp"], UTC),
            scopes=tuple(scope.split()),
            roles=tuple(roles),
            kid=key.kid,
            family_id=fid,
            extra={k: v for k, v in payload.items() if k not in RESERVED_CLAIMS},
        )

    def _verify(self, token: Any, token_use: str) -> Claims:
        if isinstance(token, str):
            hit = self._verified.get(token)
            if hit is not None and hit[0].token_use == token_use:
                self._check_times(hit[1])
                return hit[0]
        header, payload, key = self._decode(token, self._any_audience)
        if payload.get("token_use") != token_use:
            raise _fail("tokens.wrong_type")
        if token_use == ACCESS:
            typ = header.get("typ")
            if typ is not None and (not isinstance(typ, str) or typ.lower() != _ACCESS_TYP):
                raise _fail("tokens.wrong_type")
        claims = self._claims(payload, key)
        expected = self._audiences if token_use == ACCESS else (self._issuer,)
        if not any(aud in expected for aud in claims.audience):
            raise _fail("tokens.invalid_audience")
        if self._verified_max and isinstance(token, str):
            if len(self._verified) >= self._verified_max:
                self._verified.clear()
            self._verified[token] = (claims, {k: payload[k] for k in ("exp", "iat", "nbf") if k in payload})
        return claims

    async def validate_access(self, token: str) -> Claims:
        """Verify an access token and return its claims.

        Raises:
            UnauthenticatedError: ``tokens.too_large``, ``tokens.malformed``, ``tokens.unknown_key``,
                ``tokens.invalid_algorithm``, ``tokens.invalid_signature``, ``tokens.missing_claim``,
                ``tokens.invalid_issuer``, ``tokens.invalid_audience``, ``tokens.expired``,
                ``tokens.not_yet_valid``, ``tokens.wrong_type``, ``tokens.revoked``, ``tokens.invalid``.
            UnavailableError: the deny-list store cannot be reached (fails closed).
        """
        claims = self._verify(token, ACCESS)
        if self._check_revocation and await self._store.is_denied(claims.jti, self._clock.now()):
            raise _fail("tokens.revoked")
        return claims

    def claims(self, token: str) -> Claims:
        """Verify any token this service issued (access or refresh) and return its claims.

        The signature, issuer, audience and times are checked, but the deny list and the refresh
        family are **not** consulted: use it to read a token you are about to revoke or to inspect
        one, never to authorise a request (use :meth:`validate_access`).
        """
        _header, payload, key = self._decode(token, self._any_audience)
        return self._claims(payload, key)

    @staticmethod
    def unverified_claims(token: str, *, max_token_bytes: int = MAX_TOKEN_BYTES) -> dict[str, Any]:
        """The payload **without any verification** (debugging and logging of non-secret fields only).

        Nothing in the result can be trusted: anyone can write any claim. Raises
        ``UnauthenticatedError("tokens.malformed")`` / ``("tokens.too_large")`` for unparsable input.
        """
        if not isinstance(token, str | bytes):
            raise _fail("tokens.malformed")
        if len(token) > max_token_bytes:
            raise _fail("tokens.too_large", limit=max_token_bytes)
        try:
            payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except Exception:
            raise _fail("tokens.malformed") from None
        return payload

    # -- refresh and revocation --------------------------------------------------------------

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Spend a refresh token: returns a new access token and the next refresh token.

        Raises:
            UnauthenticatedError: any ``tokens.*`` verification code; ``tokens.refresh_reused`` when
                the token was already spent (the whole family is now revoked); ``tokens.revoked``
                when the family was revoked, expired or is unknown.
        """
        claims = self._verify(refresh_token, REFRESH)
        if claims.family_id is None:
            raise _fail("tokens.malformed")
        now = self._clock.now()
        if await self._store.is_denied(claims.jti, now):
            raise _fail("tokens.revoked")
        issued = self._refresh_token(claims.subject, claims.family_id, claims.scopes, claims.roles)
        outcome = await self._store.rotate_family(
            claims.family_id, claims.jti, issued.jti, issued.expires_at, now
        )
        if outcome is RotateOutcome.REUSED:
            log.warning("refresh_token_reused", family_id=claims.family_id, subject=claims.subject)
            raise _fail("tokens.refresh_reused")
        if outcome is not RotateOutcome.ROTATED:
            raise _fail("tokens.revoked")
        access = self.issue_access(claims.subject, scopes=claims.scopes, roles=claims.roles)
        return TokenPair(access=access, refresh=issued)

    async def revoke(self, jti: str, expires_at: datetime) -> None:
        """Deny-list *jti* until *expires_at* (the token's ``exp``); the entry then disappears."""
        if not isinstance(jti, str) or not jti or len(jti) > 64:
            raise ValidationError("tokens.invalid_jti")
        if expires_at.tzinfo is None:
            raise ValidationError("tokens.invalid_config", reason="expires_at must be timezone-aware")
        await self._store.deny(jti, expires_at + timedelta(seconds=self._leeway), self._clock.now())

    async def revoke_token(self, token: str) -> None:
        """Revoke a token you hold: its ``jti`` is denied and, for a refresh token, its family revoked."""
        claims = self.claims(token)
        await self.revoke(claims.jti, claims.expires_at)
        if claims.token_use == REFRESH and claims.family_id is not None:
            await self._store.revoke_family(claims.family_id, self._clock.now())

    async def revoke_family(self, family_id: str) -> bool:
        """Revoke one refresh family."""
        return await self._store.revoke_family(family_id, self._clock.now())

    async def revoke_subject(self, subject: str) -> int:
        """Revoke all refresh families of *subject* (call it on password change, disable, delete)."""
        count = await self._store.revoke_subject(_check_subject(subject), self._clock.now())
        log.info("refresh_families_revoked", subject=subject, count=count)
        return count

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}`` with every asymmetric key (signing and verification-only)."""
        keys = [jwk for key in self._keys.values() if (jwk := key.public_jwk()) is not None]
        return {"keys": keys}

    async def cleanup_expired(self) -> int:
        """Drop expired deny-list entries and refresh families."""
        return await self._store.cleanup_expired(self._clock.now())

    async def ping(self) -> None:
        """Check the store."""
        await self._store.ping()
