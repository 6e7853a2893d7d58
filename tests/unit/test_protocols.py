"""Every built-in service's default, as wired by the app, satisfies its Protocol."""

import pytest

from maaskit import protocols
from maaskit.testing import build_test_app

_RUNTIME = [
    getattr(protocols, name)
    for name in protocols.__all__
    if getattr(getattr(protocols, name), "_is_runtime_protocol", False)
]
# built by the test app without an upstream, a keyring backend or the like
_BUILDABLE = {
    "AccessRequestService",
    "AdmissionService",
    "ApiKeyService",
    "AuditLog",
    "CacheService",
    "Clock",
    "LimitsGate",
    "LoginThrottle",
    "PricingService",
    "RbacService",
    "SecretService",
    "SessionService",
    "SettingsService",
    "TokenService",
    "UsageService",
    "UserService",
}


def _members(protocol: type) -> set[str]:
    return {name for name in vars(protocol) if not name.startswith("_")}


def test_all_is_sorted() -> None:
    assert protocols.__all__ == sorted(protocols.__all__)


def test_every_name_is_a_protocol() -> None:
    for name in protocols.__all__:
        assert getattr(getattr(protocols, name), "_is_protocol", False), name


@pytest.mark.parametrize("name", sorted(_BUILDABLE))
async def test_wired_default_satisfies_its_protocol(name: str) -> None:
    protocol = getattr(protocols, name)
    async with build_test_app() as app:
        service = await app.aget(protocol)
        if protocol in _RUNTIME:
            assert isinstance(service, protocol)
        for member in _members(protocol):
            assert hasattr(service, member), f"{type(service).__name__} lacks {member}"
