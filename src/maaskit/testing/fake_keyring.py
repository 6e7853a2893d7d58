"""In-memory stand-ins for the OS keyring.

* :class:`FakeKeyring` implements :class:`maaskit.services.keyring.KeyringService` directly (no
  threads, no ``keyring`` package): override the service with it in application tests.
* :class:`InMemoryKeyringBackend` is a real ``keyring`` backend: pass it to
  :class:`~maaskit.services.keyring.DefaultKeyringService` or ``keyring.set_keyring(...)`` to test
  code that talks to ``keyring`` itself. It is never picked by ``keyring``'s auto-detection.

Example::

    from maaskit.testing.fake_keyring import FakeKeyring

    kr = FakeKeyring({("maaskit", "master-key"): "00ff..."})
    assert await kr.get("maaskit", "master-key") == "00ff..."
"""

from __future__ import annotations

from collections.abc import Mapping

from jaraco.classes import properties
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from maaskit.errors import UnavailableError
from maaskit.services.keyring import check_field

__all__ = ["FakeKeyring", "InMemoryKeyringBackend"]


class FakeKeyring:
    """An in-memory :class:`~maaskit.services.keyring.KeyringService`.

    Args:
        initial: ``{(service, username): password}`` to start with.
        available: ``False`` makes every call raise ``UnavailableError("keyring.no_backend")``, like a
            host without a backend.
    """

    def __init__(
        self, initial: Mapping[tuple[str, str], str] | None = None, *, available: bool = True
    ) -> None:
        self._items: dict[tuple[str, str], str] = dict(initial or {})
        self.available = available

    def __repr__(self) -> str:
        return f"FakeKeyring(entries={len(self._items)}, available={self.available})"

    def _check(self) -> None:
        if not self.available:
            raise UnavailableError("keyring.no_backend")

    async def get(self, service: str, username: str) -> str | None:
        """The stored password or ``None``."""
        check_field(service, "service")
        check_field(username, "username")
        self._check()
        return self._items.get((service, username))

    async def set(self, service: str, username: str, password: str) -> None:
        """Store a password."""
        check_field(service, "service")
        check_field(username, "username")
        check_field(password, "password")
        self._check()
        self._items[(service, username)] = password

    async def delete(self, service: str, username: str) -> bool:
        """Delete a password; ``True`` when one was stored."""
        check_field(service, "service")
        check_field(username, "username")
        self._check()
        return self._items.pop((service, username), None) is not None

    async def ping(self) -> None:
        """Raise when configured as unavailable."""
        self._check()


class InMemoryKeyringBackend(KeyringBackend):
    """A ``keyring`` backend that keeps passwords in a dictionary (tests only).

    Its ``priority`` raises, so ``keyring`` never selects it on its own: use it explicitly.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._items: dict[tuple[str, str], str] = {}

    @properties.classproperty
    def priority(cls) -> float:  # pragma: no cover - keyring's auto-detection only
        """Not viable for auto-detection: raises."""
        raise RuntimeError("InMemoryKeyringBackend is only used when set explicitly")

    def __repr__(self) -> str:
        return f"InMemoryKeyringBackend(entries={len(self._items)})"

    __str__ = __repr__

    def get_password(self, service: str, username: str) -> str | None:
        """The stored password or ``None``."""
        return self._items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        """Store a password."""
        self._items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        """Delete a password; ``PasswordDeleteError`` when absent (like the real backends)."""
        if self._items.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")
