"""The operating system's credential store, through the ``keyring`` package.

Example::

    from maaskit.services.keyring import DefaultKeyringService

    kr = DefaultKeyringService()                      # the OS backend keyring picks
    await kr.set("maaskit", "master-key", key_hex)
    key_hex = await kr.get("maaskit", "master-key")    # None when absent

``keyring`` calls block (D-Bus, macOS Keychain, Windows Credential Manager), so every call runs in
a worker thread (``anyio.to_thread.run_sync``). Where the OS has no usable backend (a headless Linux
server or container), ``keyring`` falls back to its "fail" backend; this service then raises
``UnavailableError("keyring.no_backend")`` with a message explaining how to configure one
(``PYTHON_KEYRING_BACKEND``, or ``keyring.set_keyring(...)``). keyrings.alt's plaintext file backend
is refused unless ``allow_insecure=True``: it stores secrets unencrypted on disk.

Tests use :class:`maaskit.testing.fake_keyring.FakeKeyring` (an in-memory ``KeyringService``) or
:class:`maaskit.testing.fake_keyring.InMemoryKeyringBackend` (a real ``keyring`` backend).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import keyring
import keyring.backends.fail
import keyring.errors
import structlog
from keyring.backend import KeyringBackend

from maaskit.errors import UnavailableError, ValidationError

__all__ = ["MAX_FIELD_LENGTH", "DefaultKeyringService", "KeyringService", "check_field"]

log = structlog.get_logger(__name__)

#: Longest service name, user name or password accepted.
MAX_FIELD_LENGTH = 4096

_INSECURE = {("keyrings.alt.file", "PlaintextKeyring")}


def check_field(value: object, field: str) -> str:
    """Validate a service name, user name or password (a non-empty string without NUL, <= 4096 chars)."""
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD_LENGTH or "\x00" in value:
        raise ValidationError("keyring.invalid_input", field=field)
    return value


@runtime_checkable
class KeyringService(Protocol):
    """Read and write credentials in the OS keyring."""

    async def get(self, service: str, username: str) -> str | None:
        """The stored password, or ``None``."""
        ...

    async def set(self, service: str, username: str, password: str) -> None:
        """Store (or replace) a password."""
        ...

    async def delete(self, service: str, username: str) -> bool:
        """Delete a password; ``True`` when one was stored."""
        ...

    async def ping(self) -> None:
        """Raise ``UnavailableError`` when no usable backend exists."""
        ...


def _backend_name(backend: Any) -> str:
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


class DefaultKeyringService:
    """The default :class:`KeyringService`.

    Args:
        backend: a ``keyring`` backend instance; ``None`` uses ``keyring.get_keyring()`` at each call
            (so ``PYTHON_KEYRING_BACKEND`` and ``keyring.set_keyring`` are honoured).
        allow_insecure: accept keyrings.alt's plaintext file backend.
    """

    def __init__(self, backend: KeyringBackend | None = None, *, allow_insecure: bool = False) -> None:
        self._backend = backend
        self._allow_insecure = allow_insecure

    def __repr__(self) -> str:
        backend = _backend_name(self._backend) if self._backend is not None else "default"
        return f"DefaultKeyringService(backend={backend!r})"

    def _resolve(self) -> Any:
        backend: Any = self._backend if self._backend is not None else keyring.get_keyring()
        if (
            isinstance(backend, keyring.backends.fail.Keyring)
            or _is_null(backend)
            or _is_empty_chain(backend)
        ):
            raise UnavailableError("keyring.no_backend")
        if not self._allow_insecure and (type(backend).__module__, type(backend).__name__) in _INSECURE:
            raise UnavailableError("keyring.insecure_backend", backend=_backend_name(backend))
        return backend

    async def _call(self, operation: str, fn: Any, *args: str) -> Any:
        backend = self._resolve()
        # The backend's exception may echo the password: it is dropped, not chained (raising
        # outside the ``except`` block leaves no ``__context__`` behind either).
        code: str | None = None
        try:
            return await anyio.to_thread.run_sync(fn, backend, *args)
        except keyring.errors.NoKeyringError:
            code = "keyring.no_backend"
        except keyring.errors.KeyringError as exc:
            log.warning("keyring_failed", operation=operation, error_type=type(exc).__name__)
            code = "keyring.error"
        if code == "keyring.no_backend":
            raise UnavailableError(code)
        raise UnavailableError("keyring.error", operation=operation)

    async def get(self, service: str, username: str) -> str | None:
        """The stored password or ``None``.

        Raises:
            ValidationError: ``keyring.invalid_input``.
            UnavailableError: ``keyring.no_backend``, ``keyring.insecure_backend``, ``keyring.error``.
        """
        check_field(service, "service")
        check_field(username, "username")
        result = await self._call("get", lambda b, s, u: b.get_password(s, u), service, username)
        return result if isinstance(result, str) else None

    async def set(self, service: str, username: str, password: str) -> None:
        """Store a password (replacing any previous one)."""
        check_field(service, "service")
        check_field(username, "username")
        check_field(password, "password")
        await self._call("set", lambda b, s, u, p: b.set_password(s, u, p), service, username, password)

    async def delete(self, service: str, username: str) -> bool:
        """Delete a password; ``False`` when none was stored."""
        check_field(service, "service")
        check_field(username, "username")

        def delete(backend: Any, s: str, u: str) -> bool:
            if backend.get_password(s, u) is None:
                return False
            try:
                backend.delete_password(s, u)
            except keyring.errors.PasswordDeleteError:
                return False
            return True

        return bool(await self._call("delete", delete, service, username))

    async def ping(self) -> None:
        """Check that a usable backend is configured (does not touch any credential)."""
        self._resolve()


def _is_null(backend: Any) -> bool:
    try:
        import keyring.backends.null as null
    except ImportError:  # pragma: no cover - always present in keyring >= 25
        return False
    return isinstance(backend, null.Keyring)


def _is_empty_chain(backend: Any) -> bool:
    try:
        import keyring.backends.chainer as chainer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(backend, chainer.ChainerBackend) and not backend.backends
