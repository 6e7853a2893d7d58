"""A blocking bridge for WSGI hosts (Flask), scripts and REPLs.

maaskit's services are async. A sync host runs them on ONE event-loop thread through anyio's
:class:`~anyio.from_thread.BlockingPortal` and calls into it; there is no second, sync copy of
any service.

Example::

    from maaskit.sync import BlockingApp

    with BlockingApp(settings) as bridge:
        created = bridge.call(bridge.app.api_keys.create, "alice", name="script")
        report = bridge.call(bridge.app.health)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from maaskit.app import AppService, create_app
from maaskit.settings import Settings

__all__ = ["BlockingApp"]

T = TypeVar("T")


class BlockingApp:
    """Runs an :class:`~maaskit.app.AppService` on a dedicated event-loop thread.

    Args:
        settings: the app's settings (default: from the environment).
        overrides: service overrides, as for :func:`maaskit.create_app`.
        app: an already built (not started) app to run instead of building one.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        overrides: Mapping[type[Any], object] | None = None,
        app: AppService | None = None,
    ) -> None:
        self._settings = settings
        self._overrides = overrides
        self._app = app
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None

    @property
    def app(self) -> AppService:
        """The running app (only inside the ``with`` block)."""
        if self._app is None or self._portal is None:
            raise RuntimeError("BlockingApp is not running; use it as a context manager")
        return self._app

    def call(self, func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run ``await func(*args, **kwargs)`` on the app's loop and return its result."""
        if self._portal is None:
            raise RuntimeError("BlockingApp is not running; use it as a context manager")

        async def invoke() -> T:
            return await func(*args, **kwargs)

        return self._portal.call(invoke)

    def start(self) -> Self:
        """Start the loop thread and the app (what ``__enter__`` does)."""
        portal = self._stack.enter_context(start_blocking_portal())
        self._portal = portal
        try:
            if self._app is None:
                self._app = portal.call(lambda: _build(self._settings, self._overrides))
            self._stack.enter_context(portal.wrap_async_context_manager(self._app))
        except BaseException:
            self._stack.close()
            self._portal = None
            raise
        return self

    def close(self) -> None:
        """Stop the app and the loop thread (what ``__exit__`` does)."""
        self._stack.close()
        self._portal = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _build(settings: Settings | None, overrides: Mapping[type[Any], object] | None) -> AppService:
    return create_app(settings, overrides=overrides)
