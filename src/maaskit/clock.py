"""Time as a service, so tests control it.

Every maaskit service that needs the time takes a :class:`Clock`. Production uses
:class:`SystemClock`; tests use :class:`maaskit.testing.FakeClock` and move time by hand.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "to_utc"]


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


def to_utc(value: datetime) -> datetime:
    """*value*, an aware datetime, in UTC: what maaskit stores and compares.

    Raises:
        ValueError: *value* is naive ("must be timezone-aware"), or its UTC time is not a
            ``datetime`` ("out of range": ``9999-12-31T23:59:59-14:00`` is in the year 10000).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range") from None
