"""A clock that only moves when the test says so."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock"]

_DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A :class:`maaskit.clock.Clock` under the test's control.

    Example::

        clock = FakeClock()
        clock.advance(seconds=61)      # a minute passes, instantly

    Args:
        start: the initial wall-clock time (aware); defaults to 2026-01-01T00:00:00Z.
    """

    __slots__ = ("_lock", "_monotonic", "_now")

    def __init__(self, start: datetime | None = None) -> None:
        start = start or _DEFAULT_START
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._monotonic = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The fake current time (aware, UTC)."""
        return self._now

    def time(self) -> float:
        """The fake current time as seconds since the epoch."""
        return self._now.timestamp()

    def monotonic(self) -> float:
        """The fake monotonic time (starts at 1000.0)."""
        return self._monotonic

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move both clocks forward; ``advance(5)`` or ``advance(minutes=2)``. Returns the new time."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("time only moves forward; use set() to jump")
        with self._lock:
            self._now += step
            self._monotonic += step.total_seconds()
            return self._now

    def set(self, when: datetime) -> None:
        """Jump the wall clock to *when* (the monotonic clock moves by the same amount if forward)."""
        if when.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        with self._lock:
            delta = (when - self._now).total_seconds()
            self._now = when.astimezone(UTC)
            if delta > 0:
                self._monotonic += delta

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"
