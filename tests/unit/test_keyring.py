"""KeyringService over the ``keyring`` package, and the fakes. Never touches the real OS keyring."""

from __future__ import annotations

import threading
from typing import Any

import keyring
import keyring.backends.fail
import keyring.backends.null
import keyring.errors
import pytest
from keyring.backend import KeyringBackend
from keyrings.alt.file import PlaintextKeyring

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.keyring import DefaultKeyringService, KeyringService
from maaskit.testing.fake_keyring import FakeKeyring, InMemoryKeyringBackend


@pytest.fixture
def backend() -> InMemoryKeyringBackend:
    return InMemoryKeyringBackend()


@pytest.fixture
def svc(backend: InMemoryKeyringBackend) -> DefaultKeyringService:
    return DefaultKeyringService(backend)


def test_protocol_conformance(svc: DefaultKeyringService) -> None:
    assert isinstance(svc, KeyringService)
    assert isinstance(FakeKeyring(), KeyringService)


async def test_get_set_delete(svc: DefaultKeyringService, backend: InMemoryKeyringBackend) -> None:
    assert await svc.get("maaskit", "master") is None
    await svc.set("maaskit", "master", "s3cret-value")
    assert backend.get_password("maaskit", "master") == "s3cret-value"
    assert await svc.get("maaskit", "master") == "s3cret-value"
    await svc.set("maaskit", "master", "other")
    assert await svc.get("maaskit", "master") == "other"
    assert await svc.delete("maaskit", "master") is True
    assert await svc.delete("maaskit", "master") is False
    assert await svc.get("maaskit", "master") is None
    await svc.ping()


async def test_calls_run_in_a_worker_thread() -> None:
    seen: list[int] = []

    class Recording(InMemoryKeyringBackend):
        def get_password(self, service: str, username: str) -> str | None:
            seen.append(threading.get_ident())
            return None

    await DefaultKeyringService(Recording()).get("s", "u")
    assert seen
    assert seen[0] != threading.get_ident()


@pytest.mark.parametrize("backend", [keyring.backends.fail.Keyring(), keyring.backends.null.Keyring()])
async def test_no_backend_is_a_clear_error(backend: Any) -> None:
    svc = DefaultKeyringService(backend)
    for call in (svc.get("s", "u"), svc.set("s", "u", "p"), svc.delete("s", "u"), svc.ping()):
        with pytest.raises(UnavailableError) as info:
            await call
        assert info.value.code == "keyring.no_backend"
        assert "PYTHON_KEYRING_BACKEND" in str(info.value)
    assert "PYTHON_KEYRING_BACKEND" in info.value.render("de")


async def test_default_backend_follows_keyring_configuration() -> None:
    previous = keyring.get_keyring()
    try:
        keyring.set_keyring(keyring.backends.fail.Keyring())
        with pytest.raises(UnavailableError) as info:
            await DefaultKeyringService().get("s", "u")
        assert info.value.code == "keyring.no_backend"
        memory = InMemoryKeyringBackend()
        keyring.set_keyring(memory)
        await DefaultKeyringService().set("s", "u", "p")
        assert memory.get_password("s", "u") == "p"
    finally:
        keyring.set_keyring(previous)


async def test_plaintext_backend_refused_unless_allowed(tmp_path: Any) -> None:
    plain = PlaintextKeyring()
    plain.file_path = str(tmp_path / "keyring.cfg")  # type: ignore[misc]
    with pytest.raises(UnavailableError) as info:
        await DefaultKeyringService(plain).set("s", "u", "p")
    assert info.value.code == "keyring.insecure_backend"
    svc = DefaultKeyringService(plain, allow_insecure=True)
    await svc.set("s", "u", "p")
    assert await svc.get("s", "u") == "p"


async def test_backend_errors_are_typed_and_secret_free() -> None:
    class Broken(InMemoryKeyringBackend):
        def set_password(self, service: str, username: str, password: str) -> None:
            raise keyring.errors.PasswordSetError(f"D-Bus said no to {password}")

        def get_password(self, service: str, username: str) -> str | None:
            raise keyring.errors.NoKeyringError("locked")

    svc = DefaultKeyringService(Broken())
    with pytest.raises(UnavailableError) as info:
        await svc.set("s", "u", "hunter2-canary")
    assert info.value.code == "keyring.error"
    assert "hunter2-canary" not in str(info.value) + repr(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None  # not even reachable through the implicit chain
    with pytest.raises(UnavailableError) as info:
        await svc.get("s", "u")
    assert info.value.code == "keyring.no_backend"


@pytest.mark.parametrize(
    ("service", "username", "password"),
    [
        ("", "u", "p"),
        ("s", "", "p"),
        ("s", "u", ""),
        ("s\x00", "u", "p"),
        ("s", "u", "x" * 4097),
        (1, "u", "p"),
    ],
)
async def test_bad_input(svc: DefaultKeyringService, service: Any, username: Any, password: Any) -> None:
    with pytest.raises(ValidationError) as info:
        await svc.set(service, username, password)
    assert info.value.code == "keyring.invalid_input"
    with pytest.raises(ValidationError):
        await FakeKeyring().set(service, username, password)


async def test_fake_keyring() -> None:
    fake = FakeKeyring({("svc", "user"): "pw"})
    assert await fake.get("svc", "user") == "pw"
    await fake.set("svc", "other", "x")
    assert await fake.delete("svc", "other") is True
    assert await fake.delete("svc", "other") is False
    assert "pw" not in repr(fake)
    fake.available = False
    with pytest.raises(UnavailableError) as info:
        await fake.get("svc", "user")
    assert info.value.code == "keyring.no_backend"
    with pytest.raises(UnavailableError):
        await fake.ping()


def test_in_memory_backend_is_never_auto_selected() -> None:
    viable = set(KeyringBackend.get_viable_backends())
    assert InMemoryKeyringBackend not in viable
    assert "entries=0" in repr(InMemoryKeyringBackend())


def test_repr(svc: DefaultKeyringService) -> None:
    assert "InMemoryKeyringBackend" in repr(svc)
    assert "default" in repr(DefaultKeyringService())
