"""Small helpers shared by services and their background loops (private)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["cancel_and_wait", "positive_seconds", "shared_task"]

_T = TypeVar("_T")


def shared_task(
    work: Coroutine[Any, Any, _T], forget: Callable[[asyncio.Future[_T]], object]
) -> asyncio.Future[_T]:
    """Run *work* as a task that several callers await, each through :func:`asyncio.shield`.

    Single-flight: the caller that starts it keeps the task where later callers find it, and
    *forget* removes it from there once it is done. Its exception is marked as retrieved, so a
    task every caller walked away from never logs "exception was never retrieved".
    """
    task = asyncio.ensure_future(work)

    def done(finished: asyncio.Future[_T]) -> None:
        forget(finished)
        if not finished.cancelled():
            finished.exception()

    task.add_done_callback(done)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background loop's *task* (if any) and wait until it has stopped."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def positive_seconds(value: object) -> bool:
    """Whether *value* is a usable interval or timeout: a finite ``int``/``float`` > 0, no bool."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
