"""Speed of token validation and of secret store/retrieve (run with ``--benchmark-enable``).

Targets (issue 4): access-token validation <= 30 us with HS256 and <= 150 us with ES256 on this
machine. The ``*_batch`` benchmarks run ``OPS`` full ``validate_access`` calls (signature, claims,
type, memory deny list) inside one event loop: divide the reported time by ``OPS``; ``cold`` has
the verified-token cache off (every call checks the signature), ``warm`` presents the same token
again (the cache hit path: time checks and deny list only). The
``*_verify`` benchmarks time one synchronous signature + claims check (no deny list).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from maaskit.clock import SystemClock
from maaskit.services.secrets import DefaultSecretService, MasterKey
from maaskit.services.tokens import DefaultTokenService, SigningKey
from maaskit.storage.memory.secrets import MemorySecretStore
from maaskit.storage.memory.tokens import MemoryTokenStore

OPS = 1_000

KEYS = {
    "HS256": lambda: SigningKey.hs256(secrets.token_bytes(32), kid="k"),
    "ES256": lambda: SigningKey.from_private_key(ec.generate_private_key(ec.SECP256R1()), kid="k"),
    "EdDSA": lambda: SigningKey.from_private_key(ed25519.Ed25519PrivateKey.generate(), kid="k"),
}


def _service(alg: str, cache: int = 10_000) -> DefaultTokenService:
    return DefaultTokenService(
        [KEYS[alg]()],
        MemoryTokenStore(),
        issuer="https://gw.example",
        audience="gw-api",
        clock=SystemClock(),
        verified_cache_size=cache,
    )


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("alg", ["HS256", "ES256", "EdDSA"])
def test_validate_access_batch(benchmark: Any, alg: str, cache: str) -> None:
    """``cold``: every call verifies the signature (cache off); ``warm``: a repeated bearer token."""
    svc = _service(alg, cache=0 if cache == "cold" else 10_000)
    token = svc.issue_access("user-1", scopes=["chat"], roles=["member"]).token
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for _ in range(OPS):
            await svc.validate_access(token)

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()


@pytest.mark.parametrize("alg", ["HS256", "ES256", "EdDSA"])
def test_verify(benchmark: Any, alg: str) -> None:
    svc = _service(alg)
    token = svc.issue_access("user-1", scopes=["chat"], roles=["member"]).token
    claims = benchmark(svc.claims, token)
    assert claims.subject == "user-1"


@pytest.mark.parametrize("alg", ["HS256", "ES256"])
def test_issue_access(benchmark: Any, alg: str) -> None:
    svc = _service(alg)
    benchmark(svc.issue_access, "user-1", scopes=["chat"])


@pytest.mark.parametrize("size", [64, 4096])
def test_secret_store_retrieve_batch(benchmark: Any, size: int) -> None:
    svc = DefaultSecretService(MemorySecretStore(), MasterKey.random(key_id="bench"))
    value = secrets.token_bytes(size)
    loop = asyncio.new_event_loop()

    async def batch() -> None:
        for i in range(OPS):
            name = f"upstream/{i % 50}"
            await svc.store(name, value)
            assert await svc.retrieve(name) == value

    try:
        benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.close()
