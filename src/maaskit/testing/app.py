"""``build_test_app``: a whole maaskit app for tests, on in-memory SQLite with a fake clock."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

from maaskit.app import AppService, create_app
from maaskit.clock import Clock
from maaskit.registry import Registry
from maaskit.settings import Settings
from maaskit.testing.clock import FakeClock

__all__ = ["build_test_app", "test_settings"]


def test_settings(**changes: Any) -> Settings:
    """Settings for tests: in-memory SQLite, memory backends, fresh random secrets.

    Keyword arguments override any setting (``test_settings(default_max_tokens=16)``).
    """
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": "sqlite+aiosqlite:///:memory:",
        "cache_backend": "memory",
        "redis_url": None,
        "signing_secret": secrets.token_urlsafe(48),
        "key_pepper": secrets.token_urlsafe(48),
        "master_key": secrets.token_urlsafe(48),
        "admin_token": secrets.token_urlsafe(24),
    }
    values.update(changes)
    return Settings(**values)


# pytest must not collect the helper above as a test
test_settings.__test__ = False  # type: ignore[attr-defined]


def build_test_app(
    overrides: Mapping[type[Any], object] | None = None,
    *,
    settings: Settings | None = None,
    clock: Clock | None = None,
    configure: Callable[[Registry], None] | None = None,
    **setting_changes: Any,
) -> AppService:
    """A full :class:`~maaskit.app.AppService` for tests (not started: use ``async with``).

    It runs on in-memory SQLite with memory backends and a :class:`FakeClock` (reach it as
    ``app.clock``), so it needs no server and no network. Swap any service for a fake with
    *overrides*::

        async with build_test_app(overrides={CacheService: my_cache}) as app:
            ...

    Args:
        overrides: ``{ServiceType: instance}`` used instead of the built-in services.
        settings: full settings (default: :func:`test_settings` with *setting_changes*).
        clock: the clock (default: a new :class:`FakeClock`).
        configure: registers the application's own services on the registry.
        **setting_changes: individual settings, e.g. ``default_max_tokens=16``.
    """
    settings = settings or test_settings(**setting_changes)
    merged: dict[type[Any], object] = {Clock: clock or FakeClock()}
    merged.update(overrides or {})
    return create_app(settings, overrides=merged, configure=configure)
