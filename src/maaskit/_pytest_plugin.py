"""maaskit's pytest plugin (entry point ``pytest11``): fixtures over :mod:`maaskit.testing`.

Imports nothing heavy until a fixture is used. Fixtures:

* ``maaskit_clock`` - a :class:`~maaskit.testing.FakeClock`;
* ``maaskit_settings`` - :func:`~maaskit.testing.test_settings` (in-memory SQLite, random secrets);
* ``maaskit_app`` - a started :func:`~maaskit.testing.build_test_app` using the two above
  (an async fixture: needs pytest-asyncio or anyio's pytest plugin in the project).

Override ``maaskit_overrides`` in a ``conftest.py`` to swap services for every test::

    @pytest.fixture
    def maaskit_overrides():
        return {CacheService: MyCache()}
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from maaskit.app import AppService
    from maaskit.settings import Settings
    from maaskit.testing.clock import FakeClock


@pytest.fixture
def maaskit_clock() -> FakeClock:
    """A fake clock at 2026-01-01T00:00:00Z."""
    from maaskit.testing.clock import FakeClock

    return FakeClock()


@pytest.fixture
def maaskit_settings() -> Settings:
    """Test settings: in-memory SQLite, memory backends, random secrets."""
    from maaskit.testing.app import test_settings

    return test_settings()


@pytest.fixture
def maaskit_overrides() -> dict[type[Any], object]:
    """Service overrides for ``maaskit_app`` (empty; override this fixture to swap services)."""
    return {}


async def _app(
    maaskit_settings: Settings, maaskit_clock: FakeClock, maaskit_overrides: dict[type[Any], object]
) -> AsyncIterator[AppService]:
    from maaskit.testing.app import build_test_app

    async with build_test_app(maaskit_overrides, settings=maaskit_settings, clock=maaskit_clock) as app:
        yield app


try:  # prefer pytest-asyncio when present, so the fixture runs in the test's loop
    import pytest_asyncio

    maaskit_app = pytest_asyncio.fixture(_app, name="maaskit_app")
except ImportError:  # pragma: no cover - anyio's plugin handles async fixtures by itself
    maaskit_app = pytest.fixture(_app, name="maaskit_app")
