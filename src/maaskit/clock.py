"""Time as a service, so tests control it.

Every maaskit service that needs the time takes a :class:`Clock`. Production uses
:class:`SystemClock`; tests use :class:`maaskit.testing.FakeClock` and move time by hand.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Wall-clock and monotonic time."""

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        ...

    def time(self) -> float:
        """The current time in seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """A monotonic timestamp in seconds, for durations and deadlines."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current time in seconds since the epoch (UTC)."""
        return time.time()

    def monotonic(self) -> float:
        """A monotonic timestamp in seconds."""
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"
