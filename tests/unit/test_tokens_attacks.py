"""Attacks on token validation, in the spirit of pyjwt's and authlib's test suites.

Every forged, tampered, confused or malformed token must end in an ``UnauthenticatedError`` with a
precise ``tokens.*`` code: never an unhandled exception, never the token in the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maaskit.errors import UnauthenticatedError
from maaskit.services.tokens import DefaultTokenService, SigningKey
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
def es_key() -> SigningKey:
    return SigningKey.from_private_key(ec.generate_private_key(ec.SECP256R1()), kid="es-1")


@pytest.fixture
def svc(hs_key: SigningKey, clock: FakeClock) -> DefaultTokenService:
    return DefaultTokenService([hs_key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


def claims(clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    now = int(clock.time())
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "user-1",
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "jti": "j-" + secrets.token_hex(6),
        "token_use": "access",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign_hs(key: SigningKey, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(
        payload, key.signing_key, algorithm="HS256", headers={"kid": key.kid, "typ": "at+jwt", **headers}
    )


async def refused(svc: DefaultTokenService, token: Any, code: str) -> UnauthenticatedError:
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(token)
    err = info.value
    assert err.code == code, (err.code, code)
    if isinstance(token, str) and len(token) > 20:
        for text in (str(err), repr(err), err.render("de"), json.dumps(err.to_dict(), default=str)):
            assert token not in text
            assert token.split(".")[-1][:20] not in text or len(token.split(".")[-1]) < 8
    return err


# -- algorithm attacks -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(svc: DefaultTokenService, clock: FakeClock, alg: str) -> None:
    token = f"{b64json({'alg': alg, 'kid': 'hs-1', 'typ': 'at+jwt'})}.{b64json(claims(clock))}."
    await refused(svc, token, "tokens.invalid_algorithm")


async def test_alg_none_without_kid_is_refused(svc: DefaultTokenService, clock: FakeClock) -> None:
    token = f"{b64json({'alg': 'none'})}.{b64json(claims(clock))}."
    await refused(svc, token, "tokens.unknown_key")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    clock: FakeClock, rsa_private: rsa.RSAPrivateKey
) -> None:
    """The classic key confusion: an HS256 token whose HMAC secret is the server's RSA public key."""
    key = SigningKey.from_private_key(rsa_private, kid="rsa-1")
    svc = DefaultTokenService([key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    public_pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'at+jwt'})}.{b64json(claims(clock))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    await refused(svc, f"{signing_input}.{b64(mac)}", "tokens.invalid_algorithm")
    jwk_secret = json.dumps(key.public_jwk()).encode()
    mac = hmac.new(jwk_secret, signing_input.encode(), hashlib.sha256).digest()
    await refused(svc, f"{signing_input}.{b64(mac)}", "tokens.invalid_algorithm")


async def test_algorithm_swapped_within_the_key_family(
    clock: FakeClock, rsa_private: rsa.RSAPrivateKey
) -> None:
    key = SigningKey.from_private_key(rsa_private, kid="rsa-1")
    svc = DefaultTokenService([key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    token = jwt.encode(claims(clock), rsa_private, algorithm="PS256", headers={"kid": "rsa-1"})
    await refused(svc, token, "tokens.invalid_algorithm")


async def test_attacker_jwk_header_is_never_used(es_key: SigningKey, clock: FakeClock) -> None:
    """A token carrying the attacker's own public key in ``jwk`` (and ``jku``/``x5u``) is refused."""
    svc = DefaultTokenService([es_key], MemoryTokenStore(), issuer=ISS, audience=AUD, clock=clock)
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = SigningKey.from_private_key(attacker, kid="evil").public_jwk()
    headers = {
        "kid": "es-1",
        "typ": "at+jwt",
        "jwk": attacker_jwk,
        "jku": "http://127.0.0.1:1/jwks.json",
        "x5u": "http://127.0.0.1:1/cert.pem",
    }
    forged = jwt.encode(claims(clock), attacker, algorithm="ES256", headers=headers)
    await refused(svc, forged, "tokens.invalid_signature")
    headers.pop("kid")
    forged = jwt.encode(claims(clock), attacker, algorithm="ES256", headers=headers)
    await refused(svc, forged, "tokens.unknown_key")


async def test_unknown_and_odd_kids(svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock) -> None:
    await refused(svc, sign_hs(hs_key, claims(clock), kid="other"), "tokens.unknown_key")
    await refused(svc, sign_hs(hs_key, claims(clock), kid="../../etc/passwd"), "tokens.unknown_key")
    no_kid = jwt.encode(claims(clock), hs_key.signing_key, algorithm="HS256")
    await refused(svc, no_kid, "tokens.unknown_key")
    header = b64json({"alg": "HS256", "kid": 7})
    await refused(svc, f"{header}.{b64json(claims(clock))}.sig", "tokens.malformed")


async def test_token_signed_with_another_secret(svc: DefaultTokenService, clock: FakeClock) -> None:
    other = SigningKey.hs256(secrets.token_bytes(32), kid="hs-1")  # same kid, different secret
    await refused(svc, sign_hs(other, claims(clock)), "tokens.invalid_signature")


# -- signature tampering -----------------------------------------------------------------------


async def test_stripped_signature(svc: DefaultTokenService) -> None:
    token = svc.issue_access("user-1").token
    head, body, _sig = token.split(".")
    await refused(svc, f"{head}.{body}.", "tokens.invalid_signature")
    await refused(svc, f"{head}.{body}", "tokens.malformed")


@pytest.mark.parametrize("position", [0, 5, 17, 30])
async def test_bit_flipped_signature(svc: DefaultTokenService, position: int) -> None:
    token = svc.issue_access("user-1").token
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[position] ^= 0x01
    await refused(svc, f"{head}.{body}.{b64(bytes(raw))}", "tokens.invalid_signature")


async def test_tampered_payload(svc: DefaultTokenService, clock: FakeClock) -> None:
    token = svc.issue_access("user-1", roles=["member"]).token
    head, _body, sig = token.split(".")
    evil = b64json(claims(clock, sub="admin", roles=["admin"]))
    await refused(svc, f"{head}.{evil}.{sig}", "tokens.invalid_signature")


async def test_tampered_header(svc: DefaultTokenService) -> None:
    token = svc.issue_access("user-1").token
    _head, body, sig = token.split(".")
    head = b64json({"alg": "HS256", "kid": "hs-1", "typ": "at+jwt", "x": 1})
    await refused(svc, f"{head}.{body}.{sig}", "tokens.invalid_signature")


# -- claims ------------------------------------------------------------------------------------


async def test_expired(svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock) -> None:
    now = int(clock.time())
    await refused(svc, sign_hs(hs_key, claims(clock, iat=now - 700, exp=now - 31)), "tokens.expired")
    ok = sign_hs(hs_key, claims(clock, iat=now - 700, exp=now - 29))  # within the 30 s leeway
    assert (await svc.validate_access(ok)).subject == "user-1"


async def test_issued_in_the_future(svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock) -> None:
    now = int(clock.time())
    await refused(svc, sign_hs(hs_key, claims(clock, iat=now + 120, exp=now + 900)), "tokens.not_yet_valid")
    await refused(svc, sign_hs(hs_key, claims(clock, nbf=now + 120)), "tokens.not_yet_valid")
    ok = sign_hs(hs_key, claims(clock, iat=now + 20, nbf=now + 20))
    assert (await svc.validate_access(ok)).subject == "user-1"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "sub", "iss", "aud"])
async def test_missing_required_claim(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock, claim: str
) -> None:
    payload = claims(clock)
    del payload[claim]
    err = await refused(svc, sign_hs(hs_key, payload), "tokens.missing_claim")
    assert err.params["claim"] == claim


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"exp": "tomorrow"}, "tokens.malformed"),
        ({"iat": True}, "tokens.malformed"),
        ({"nbf": "soon"}, "tokens.malformed"),
        ({"sub": 42}, "tokens.invalid"),
        ({"jti": ["a"]}, "tokens.invalid"),
        ({"aud": 5}, "tokens.invalid_audience"),
        ({"scope": ["chat"]}, "tokens.malformed"),
        ({"roles": "admin"}, "tokens.malformed"),
    ],
)
async def test_badly_typed_claims(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock, override: dict[str, Any], code: str
) -> None:
    await refused(svc, sign_hs(hs_key, claims(clock, **override)), code)


async def test_wrong_audience_and_issuer(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock
) -> None:
    await refused(svc, sign_hs(hs_key, claims(clock, aud="other-api")), "tokens.invalid_audience")
    await refused(svc, sign_hs(hs_key, claims(clock, aud=["x", "y"])), "tokens.invalid_audience")
    await refused(svc, sign_hs(hs_key, claims(clock, iss="https://evil.example")), "tokens.invalid_issuer")
    # An access token whose audience is the issuer (the refresh-token audience) is refused too.
    await refused(svc, sign_hs(hs_key, claims(clock, aud=ISS)), "tokens.invalid_audience")


# -- token type confusion ----------------------------------------------------------------------


async def test_refresh_token_is_not_an_access_token(svc: DefaultTokenService) -> None:
    pair = await svc.issue_pair("user-1")
    await refused(svc, pair.refresh.token, "tokens.wrong_type")


async def test_access_token_cannot_refresh(svc: DefaultTokenService) -> None:
    pair = await svc.issue_pair("user-1")
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(pair.access.token)
    assert info.value.code == "tokens.wrong_type"


async def test_id_token_is_not_an_access_token(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock
) -> None:
    id_token = sign_hs(
        hs_key, claims(clock, token_use=None, nonce="n-1", auth_time=int(clock.time())), typ="JWT"
    )
    await refused(svc, id_token, "tokens.wrong_type")


async def test_access_claim_with_foreign_typ_header(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock
) -> None:
    await refused(svc, sign_hs(hs_key, claims(clock), typ="dpop+jwt"), "tokens.wrong_type")


async def test_forged_refresh_with_access_audience(
    svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock
) -> None:
    token = sign_hs(hs_key, claims(clock, token_use="refresh", fid="fam_x"), typ="JWT")
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(token)
    assert info.value.code == "tokens.invalid_audience"


async def test_refresh_without_family(svc: DefaultTokenService, hs_key: SigningKey, clock: FakeClock) -> None:
    token = sign_hs(hs_key, claims(clock, token_use="refresh", aud=ISS), typ="JWT")
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(token)
    assert info.value.code == "tokens.malformed"
    token = sign_hs(hs_key, claims(clock, token_use="refresh", aud=ISS, fid="fam_unknown"), typ="JWT")
    with pytest.raises(UnauthenticatedError) as info:
        await svc.refresh(token)
    assert info.value.code == "tokens.revoked"


# -- size and malformed input ------------------------------------------------------------------


async def test_one_megabyte_token_is_refused_before_parsing(
    svc: DefaultTokenService, clock: FakeClock
) -> None:
    huge = f"{b64json({'alg': 'HS256', 'kid': 'hs-1'})}.{b64json(claims(clock, pad='A' * 1_000_000))}.sig"
    await refused(svc, huge, "tokens.too_large")
    await refused(svc, huge.encode(), "tokens.too_large")
    await refused(svc, "a" * 8193, "tokens.too_large")


MALFORMED: list[tuple[str, Callable[[FakeClock], Any]]] = [
    ("empty", lambda c: ""),
    ("one segment", lambda c: "abc"),
    ("two segments", lambda c: "abc.def"),
    ("four segments", lambda c: "a.b.c.d"),
    ("bad base64", lambda c: "!!!.###.$$$"),
    ("non-json header", lambda c: f"{b64(b'not json')}.{b64json(claims(c))}.c2ln"),
    ("header is a list", lambda c: f"{b64json(['alg'])}.{b64json(claims(c))}.c2ln"),
    ("binary header", lambda c: f"{b64(bytes(range(256)))}.{b64json(claims(c))}.c2ln"),
    ("non-json payload", lambda c: f"{b64json({'alg': 'HS256', 'kid': 'hs-1'})}.{b64(b'{')}.c2ln"),
    ("non-ascii", lambda c: "ä.ö.ü"),
    ("whitespace", lambda c: "   "),
    ("none", lambda c: None),
    ("int", lambda c: 12345),
    ("dict", lambda c: {"alg": "none"}),
]


@pytest.mark.parametrize(("name", "make"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_tokens(
    svc: DefaultTokenService, clock: FakeClock, name: str, make: Callable[[FakeClock], Any]
) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(make(clock))
    assert info.value.code in {"tokens.malformed", "tokens.unknown_key", "tokens.invalid_signature"}


async def test_payload_that_is_not_an_object(svc: DefaultTokenService, hs_key: SigningKey) -> None:
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'hs-1'})}.{b64json([1, 2, 3])}"
    mac = hmac.new(hs_key.signing_key, signing_input.encode(), hashlib.sha256).digest()
    await refused(svc, f"{signing_input}.{b64(mac)}", "tokens.malformed")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.lists(
            st.text(
                alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=", max_size=60
            ),
            min_size=1,
            max_size=5,
        ).map(".".join),
    )
)
async def test_arbitrary_input_only_ever_raises_typed_errors(svc: DefaultTokenService, garbage: Any) -> None:
    with pytest.raises(UnauthenticatedError) as info:
        await svc.validate_access(garbage)
    assert info.value.code.startswith("tokens.")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_single_character_change_is_refused(svc: DefaultTokenService, data: st.DataObject) -> None:
    token = svc.issue_access("user-1").token
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    )
    mutated = token[:index] + replacement + token[index + 1 :]
    if mutated == token:
        return
    try:
        claims = await svc.validate_access(mutated)
    except UnauthenticatedError:
        return
    # Base64url's last character can carry unused bits: a mutation there may decode to the same bytes.
    assert claims.jti == svc.claims(token).jti
