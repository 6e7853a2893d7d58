"""TokenService: issuing, validation rules, refresh families, revocation, keys and JWKS."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from maaskit.errors import UnauthenticatedError, ValidationError
from maaskit.services.tokens import ACCESS, REFRESH, DefaultTokenService, SigningKey
from maaskit.storage.memory.tokens import MemoryTokenStore
from maaskit.testing.clock import FakeClock

ISS = "https://gw.example"
AUD = "gw-api"


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def hs_key() -> SigningKey:
    return SigningKey.hs256(secrets.token_bytes(32), kid="hs-1")


@pytest.fixture
def svc(hs_key: SigningKey, clock: FakeClock) -> DefaultTokenService:
    return DefaultTokenService([hs_key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload_for(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "sub": "user-1",
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "jti": "jti-" + secrets.token_hex(4),
        "token_use": ACCESS,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign_hs(key: SigningKey, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(
        payload, key.signing_key, algorithm="HS256", headers={"kid": key.kid, "typ": "at+jwt", **headers}
    )


# -- issuing and the happy path ----------------------------------------------------------------


async def test_access_token_round_trip(svc: DefaultTokenService, clock: FakeClock) -> None:
    issued = svc.issue_access(
        "user-1", scopes=["chat", "embed"], roles=["member"], extra_claims={"tenant": "t1"}
    )
    claims = await svc.validate_access(issued.token)
    assert claims.subject == "user-1"
    assert claims.issuer == ISS
    assert claims.audience == (AUD,)
    assert claims.scopes == ("chat", "embed")
    assert claims.roles == ("member",)
    assert claims.extra == {"tenant": "t1"}
    assert claims.token_use == ACCESS
    assert claims.jti == issued.jti
    assert claims.kid == "hs-1"
    assert issued.expires_at - issued.issued_at == timedelta(minutes=10)
    assert issued.issued_at == clock.now()
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "HS256", "kid": "hs-1", "typ": "at+jwt"}


def test_issued_token_repr_hides_the_token(svc: DefaultTokenService) -> None:
    issued = svc.issue_access("user-1")
    assert issued.token not in repr(issued)
    assert "hs-1" in repr(issued)


def test_signing_key_repr_hides_material(hs_key: SigningKey) -> None:
    assert hs_key.signing_key.hex() not in repr(hs_key)
    assert repr(hs_key.signing_key) not in repr(hs_key)


@pytest.mark.parametrize(
    "name", ["iss", "sub", "aud", "exp", "iat", "jti", "token_use", "scope", "roles", "fid"]
)
def test_extra_claims_cannot_override_reserved(svc: DefaultTokenService, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        svc.issue_access("user-1", extra_claims={name: "x"})
    assert info.value.code == "tokens.reserved_claim"


@pytest.mark.parametrize("subject", ["", "x" * 257])
def test_bad_subject_is_refused(svc: DefaultTokenService, subject: str) -> None:
    with pytest.raises(ValidationError) as info:
        svc.issue_access(subject)
    assert info.value.code == "tokens.invalid_subject"


def test_bad_scopes_and_ttl_are_refused(svc: DefaultTokenService) -> None:
    with pytest.raises(ValidationError, match="scope"):
        svc.issue_access("u", scopes="chat embed")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        svc.issue_access("u", scopes=["two words"])
    with pytest.raises(ValidationError) as info:
        svc.issue_access("u", ttl=timedelta(0))
    assert info.value.code == "tokens.invalid_ttl"
    with pytest.raises(ValidationError) as info:
        svc.issue_access("u", extra_claims={"x": object()})
    assert info.value.code == "tokens.invalid_claim"


async def test_custom_ttl_and_leeway(svc: DefaultTokenService, clock: FakeClock) -> None:
    issued = svc.issue_access("user-1", ttl=timedelta(seconds=60))
    clock.advance(seconds=60 + 29)  # inside the 30 s leeway
    assert (await svc.validate_access(issued.token)).subject == "user-1"
    clock.advance(seconds=1)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(issued.token)
    assert info.value.code == "tokens.expired"


async def test_multiple_audiences(hs_key: SigningKey, clock: FakeClock) -> None:
    svc = DefaultTokenService([hs_key], MemoryTokenStore(), issuer=ISS, audience=["a", "b"], clock=clock)
    token = svc.issue_access("u").token
    assert (await svc.validate_access(token)).audience == ("a", "b")
    one = jwt.encode(
        payload_for(clock, aud="b"),
        hs_key.signing_key,
        algorithm="HS256",
        headers={"kid": "hs-1", "typ": "at+jwt"},
    )
    assert (await svc.validate_access(one)).audience == ("b",)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", [b"short", secrets.token_bytes(31), b"a" * 64, b"abababababababababababababababab"]
)
def test_weak_hmac_secret_is_a_configuration_error(secret: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        SigningKey.hs256(secret, kid="k")
    assert info.value.code == "tokens.weak_key"
    assert secret.hex() not in str(info.value)
    assert repr(secret) not in repr(info.value)


def test_weak_rsa_and_wrong_curve_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValidationError) as info:
        SigningKey.from_private_key(small, kid="rsa-small")
    assert info.value.code == "tokens.weak_key"
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValidationError) as info:
        SigningKey.from_private_key(p384, kid="p384")
    assert info.value.code == "tokens.weak_key"


def test_bad_key_inputs() -> None:
    with pytest.raises(ValidationError) as info:
        SigningKey.from_private_key("not a pem", kid="k")
    assert info.value.code == "tokens.invalid_key"
    with pytest.raises(ValidationError):
        SigningKey.hs256("a string secret" * 4, kid="k")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        SigningKey.hs256(secrets.token_bytes(32), kid="bad kid/with slash")
    with pytest.raises(ValidationError):
        SigningKey.from_public_key(b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----", kid="k")


def test_service_configuration_errors(hs_key: SigningKey) -> None:
    store = MemoryTokenStore()
    with pytest.raises(ValidationError) as info:
        DefaultTokenService([hs_key, hs_key], store, issuer=ISS, audience=AUD)
    assert info.value.code == "tokens.duplicate_kid"
    public_only = SigningKey.from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), kid="pub")
    with pytest.raises(ValidationError) as info:
        DefaultTokenService([public_only], store, issuer=ISS, audience=AUD)
    assert info.value.code == "tokens.no_signing_key"
    with pytest.raises(ValidationError):
        DefaultTokenService([hs_key], store, issuer="", audience=AUD)
    with pytest.raises(ValidationError):
        DefaultTokenService([hs_key], store, issuer=ISS, audience=[])
    with pytest.raises(ValidationError):
        DefaultTokenService([hs_key], store, issuer=ISS, audience=AUD, access_ttl=timedelta(0))


def test_pem_keys_are_accepted(rsa_private: rsa.RSAPrivateKey) -> None:
    pem = rsa_private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = SigningKey.from_private_key(pem.decode(), kid="rsa")
    assert key.algorithm == "RS256"
    assert key.can_sign
    pub_pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pub = SigningKey.from_public_key(pub_pem, kid="rsa-old")
    assert pub.algorithm == "RS256"
    assert not pub.can_sign


@pytest.mark.parametrize("kind", ["ES256", "EdDSA", "RS256"])
async def test_asymmetric_keys_and_jwks(kind: str, clock: FakeClock, rsa_private: rsa.RSAPrivateKey) -> None:
    private: Any = {
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
        "RS256": lambda: rsa_private,
    }[kind]()
    key = SigningKey.from_private_key(private, kid=f"{kind.lower()}-1")
    hs = SigningKey.hs256(secrets.token_bytes(32), kid="hs-old")
    svc = DefaultTokenService([key, hs], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    token = svc.issue_access("user-1").token
    assert jwt.get_unverified_header(token)["alg"] == kind
    assert (await svc.validate_access(token)).kid == key.kid

    doc = svc.jwks()
    assert [k["kid"] for k in doc["keys"]] == [key.kid]  # the HMAC key is never published
    jwk = doc["keys"][0]
    assert jwk["alg"] == kind
    assert jwk["use"] == "sig"
    assert "d" not in jwk
    assert "p" not in jwk
    # A standard verifier can use the document as-is.
    verifier = jwt.PyJWKSet.from_dict(json.loads(json.dumps(doc)))[key.kid]
    decoded = jwt.decode(token, verifier, audience=AUD, options={"verify_exp": False, "verify_iat": False})
    assert decoded["sub"] == "user-1"


async def test_key_rotation_by_kid(clock: FakeClock) -> None:
    old = SigningKey.from_private_key(ec.generate_private_key(ec.SECP256R1()), kid="2025")
    new = SigningKey.from_private_key(ec.generate_private_key(ec.SECP256R1()), kid="2026")
    before = DefaultTokenService([old], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    old_token = before.issue_access("user-1").token

    # During rotation: new key signs, the old one (public half only) still verifies.
    retired = SigningKey.from_public_key(old.verifying_key, kid="2025")
    during = DefaultTokenService([new, retired], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    assert during.issue_access("user-1").kid == "2026"
    assert (await during.validate_access(old_token)).kid == "2025"
    assert {k["kid"] for k in during.jwks()["keys"]} == {"2025", "2026"}

    after = DefaultTokenService([new], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    with pytest.raises(UnauthenticatedError) as info:
        await after.validate_access(old_token)
    assert info.value.code == "tokens.unknown_key"


def test_active_kid_selects_the_signer(hs_key: SigningKey, clock: FakeClock) -> None:
    other = SigningKey.hs256(secrets.token_bytes(32), kid="hs-2")
    svc = DefaultTokenService(
        [hs_key, other], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock, active_kid="hs-2"
    )
    assert svc.issue_access("u").kid == "hs-2"
    assert "hs-2" in repr(svc)
    assert hs_key.signing_key.hex() not in repr(svc)


# -- refresh families --------------------------------------------------------------------------


async def test_refresh_rotates_and_keeps_scopes(svc: DefaultTokenService, clock: FakeClock) -> None:
    pair = await svc.issue_pair("user-1", scopes=["chat"], roles=["admin"])
    assert pair.refresh.family_id is not None
    assert pair.refresh.token_use == REFRESH
    clock.advance(minutes=5)
    nxt = await svc.refresh(pair.refresh.token)
    assert nxt.refresh.family_id == pair.refresh.family_id
    assert nxt.refresh.jti != pair.refresh.jti
    claims = await svc.validate_access(nxt.access.token)
    assert claims.scopes == ("chat",)
    assert claims.roles == ("admin",)
    assert (await svc.refresh(nxt.refresh.token)).refresh.family_id == pair.refresh.family_id


async def test_refresh_reuse_revokes_the_whole_family(svc: DefaultTokenService) -> None:
    pair = await svc.issue_pair("user-1")
    second = await svc.refresh(pair.refresh.token)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(pair.refresh.token)  # replay of a spent token
    assert info.value.code == "tokens.refresh_reused"
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(second.refresh.token)  # the legitimate successor is dead too
    assert info.value.code == "tokens.revoked"


async def test_refresh_token_expires(svc: DefaultTokenService, clock: FakeClock) -> None:
    pair = await svc.issue_pair("user-1")
    clock.advance(days=14, seconds=31)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(pair.refresh.token)
    assert info.value.code == "tokens.expired"


async def test_revoke_subject_kills_every_family(svc: DefaultTokenService) -> None:
    a = await svc.issue_pair("user-1")
    b = await svc.issue_pair("user-1")
    other = await svc.issue_pair("user-2")
    assert await svc.revoke_subject("user-1") == 2
    for pair in (a, b):
        with pytest.raises(UnauthenticatedError) as info:
            await svc.refresh(pair.refresh.token)
        assert info.value.code == "tokens.revoked"
    await svc.refresh(other.refresh.token)


async def test_revoke_family_and_logout(svc: DefaultTokenService) -> None:
    pair = await svc.issue_pair("user-1")
    assert pair.refresh.family_id is not None
    assert await svc.revoke_family(pair.refresh.family_id) is True
    assert await svc.revoke_family(pair.refresh.family_id) is False
    with pytest.raises(UnauthenticatedError):
        await svc.refresh(pair.refresh.token)

    login = await svc.issue_pair("user-1")
    await svc.revoke_token(login.refresh.token)
    await svc.revoke_token(login.access.token)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(login.refresh.token)
    assert info.value.code == "tokens.revoked"
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(login.access.token)
    assert info.value.code == "tokens.revoked"


async def test_issue_refresh_into_existing_family(svc: DefaultTokenService) -> None:
    first = await svc.issue_refresh("user-1")
    assert first.family_id is not None
    second = await svc.issue_refresh("user-1", first.family_id)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(first.token)  # no longer the current one: a reuse
    assert info.value.code == "tokens.refresh_reused"
    with pytest.raises(UnauthenticatedError):
        await svc.issue_refresh("user-1", first.family_id)  # family revoked by the reuse
    with pytest.raises(UnauthenticatedError):
        await svc.refresh(second.token)
    with pytest.raises(UnauthenticatedError):
        await svc.issue_refresh("user-1", "fam_unknown")


# -- revocation --------------------------------------------------------------------------------


async def test_revoked_jti_is_refused_until_the_token_expires(
    svc: DefaultTokenService, clock: FakeClock
) -> None:
    store = MemoryTokenStore()
    svc = DefaultTokenService(
        [SigningKey.hs256(secrets.token_bytes(32), kid="k")], store, issuer=ISS, audience=AUD, clock=clock
    )
    issued = svc.issue_access("user-1")
    untouched = svc.issue_access("user-1")
    await svc.revoke(issued.jti, issued.expires_at)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(issued.token)
    assert info.value.code == "tokens.revoked"
    assert (await svc.validate_access(untouched.token)).jti == untouched.jti
    # The deny-list entry lives as long as the token (+ leeway), then it is cleaned up.
    assert await svc.cleanup_expired() == 0
    clock.advance(minutes=10, seconds=31)
    assert await svc.cleanup_expired() == 1


async def test_revoke_validates_input(svc: DefaultTokenService, clock: FakeClock) -> None:
    with pytest.raises(ValidationError):
        await svc.revoke("", clock.now())
    with pytest.raises(ValidationError):
        await svc.revoke("jti", clock.now().replace(tzinfo=None))


async def test_claims_reads_both_types_without_the_deny_list(svc: DefaultTokenService) -> None:
    pair = await svc.issue_pair("user-1")
    assert svc.claims(pair.refresh.token).token_use == REFRESH
    assert svc.claims(pair.access.token).token_use == ACCESS
    await svc.revoke(pair.access.jti, pair.access.expires_at)
    assert svc.claims(pair.access.token).jti == pair.access.jti  # documented: no deny-list check
    assert DefaultTokenService.unverified_claims(pair.access.token)["sub"] == "user-1"
    with pytest.raises(UnauthenticatedError):
        DefaultTokenService.unverified_claims("garbage")


async def test_ping(svc: DefaultTokenService) -> None:
    await svc.ping()


# -- the verified-token cache ------------------------------------------------------------------


async def test_cached_tokens_are_still_revoked_expired_and_exact(
    svc: DefaultTokenService, clock: FakeClock
) -> None:
    issued = svc.issue_access("user-1", extra_claims={"tenant": "t1"})
    first = await svc.validate_access(issued.token)
    assert await svc.validate_access(issued.token) is first  # served from the cache
    with pytest.raises(TypeError):
        first.extra["tenant"] = "evil"  # type: ignore[index]
    # A token that only shares a prefix with a cached one is verified from scratch.
    head, body, sig = issued.token.split(".")
    with pytest.raises(UnauthenticatedError):
        await svc.validate_access(f"{head}.{body}.{sig[:-2]}AA")
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(issued.token)  # the cache never changes the type check
    assert info.value.code == "tokens.wrong_type"
    clock.advance(minutes=10, seconds=31)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(issued.token)
    assert info.value.code == "tokens.expired"

    other = svc.issue_access("user-1")
    await svc.validate_access(other.token)
    await svc.revoke(other.jti, other.expires_at)
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(other.token)
    assert info.value.code == "tokens.revoked"


async def test_cache_can_be_disabled_and_is_bounded(hs_key: SigningKey, clock: FakeClock) -> None:
    off = DefaultTokenService(
        [hs_key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock, verified_cache_size=0
    )
    token = off.issue_access("u").token
    assert await off.validate_access(token) == await off.validate_access(token)
    assert off._verified == {}
    small = DefaultTokenService(
        [hs_key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock, verified_cache_size=3
    )
    for _ in range(10):
        await small.validate_access(small.issue_access("u").token)
        assert len(small._verified) <= 3
    with pytest.raises(ValidationError):
        DefaultTokenService([hs_key], MemoryTokenStore(), issuer=ISS, audience=AUD, verified_cache_size=-1)
