"""Login throttling: a few free failures, then a growing delay, and a hard hourly cap.

:class:`DefaultUserService` *reserves* every attempt with :meth:`LoginThrottle.reserve` before it
verifies a password: in one atomic step the throttle checks that the attempt is allowed and counts it
as a failure. When the password is right, :meth:`LoginThrottle.release` takes that count back and
:meth:`LoginThrottle.record_success` clears the account's failures. So concurrent attempts cannot
all pass the check before any failure is counted: however many arrive at once, no more passwords are
checked than the limits below allow. Failures are counted per account (the normalised username,
whether or not the account exists, so throttling reveals nothing) and per client IP address. The
throttle never sleeps: when an attempt is not allowed yet it raises
``RateLimitedError("users.login_throttled", retry_after=<seconds>)`` and the adapter answers 429
with a ``Retry-After`` header.

Policy of :class:`MemoryLoginThrottle` (defaults): 5 free failures per account within an hour; after
that the next attempt must wait ``1 s * 2**(failures - 6)`` after the last one, at most 15 minutes; never more than 100
failures per account per hour are accepted. Per IP address: 20 free failures, at most 1,000 an hour
(IPv6 addresses are grouped by their /64 network). A successful login clears the account's failures
but not the IP's.

The client IP must be the address *of the peer*, or the address an explicitly trusted reverse proxy
reports. Never pass a value taken from ``X-Forwarded-For`` (or ``Forwarded``/``X-Real-IP``) when the
peer is not one of your trusted proxies: anyone can set those headers, and an attacker would simply
rotate them to dodge the per-IP limit. The per-account limit holds regardless of the IP.

The memory throttle is per process; behind several replicas an attacker gets at most that budget on
each replica. Plug in a shared implementation of :class:`LoginThrottle` when that matters; its
:meth:`~LoginThrottle.reserve` must be atomic across replicas (for example one Lua script or one
transaction that checks and appends). A throttle without ``reserve``/``release`` (written for an
older maaskit) still works the old way — ``check`` before, ``record_failure`` after the password
check — and so does not bound concurrent attempts.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from typing import Protocol, runtime_checkable

import attrs
from cachetools import TTLCache

from maaskit.clock import Clock, SystemClock
from maaskit.errors import RateLimitedError, ValidationError

__all__ = ["LoginThrottle", "MemoryLoginThrottle", "ThrottlePolicy", "client_ip_key"]

_HOUR = 3600.0


@attrs.frozen
class ThrottlePolicy:
    """Limits for one kind of key (account or IP address).

    Attributes:
        free_failures: failures within the window that cost no delay.
        base_delay: seconds of delay after the first failure beyond the free ones; doubles after each.
        max_delay: the delay never grows beyond this (seconds).
        max_failures: hard cap of failures accepted within ``window`` (seconds).
        window: the counting window in seconds (one hour).
    """

    free_failures: int = 5
    base_delay: float = 1.0
    max_delay: float = 900.0
    max_failures: int = 100
    window: float = _HOUR

    def __attrs_post_init__(self) -> None:
        if self.free_failures < 0 or self.max_failures < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValidationError(
                "config.invalid", setting="login throttle", reason="limits must be positive"
            )
        if self.window <= 0:
            raise ValidationError(
                "config.invalid", setting="login throttle", reason="window must be positive"
            )

    def retry_at(self, failures: deque[float]) -> float:
        """Monotonic time at which the next attempt is allowed (given failure timestamps, oldest first)."""
        count = len(failures)
        if count == 0:
            return -math.inf
        at = -math.inf
        if count > self.free_failures:
            exponent = min(count - self.free_failures - 1, 62)
            at = failures[-1] + min(self.base_delay * (2**exponent), self.max_delay)
        if count >= self.max_failures:
            at = max(at, failures[-self.max_failures] + self.window)
        return at


@runtime_checkable
class LoginThrottle(Protocol):
    """Decides whether a login attempt may be checked at all."""

    async def check(self, account: str, client_ip: str | None) -> None:
        """Raise ``RateLimitedError("users.login_throttled", retry_after=...)`` if not allowed now."""
        ...

    async def reserve(self, account: str, client_ip: str | None) -> None:
        """Atomically :meth:`check` and, if allowed, count the attempt as a failure (nothing is
        counted when it raises ``users.login_throttled``)."""
        ...

    async def release(self, account: str, client_ip: str | None) -> None:
        """Take back one reserved attempt (its password was right) for the account and the IP."""
        ...

    async def record_failure(self, account: str, client_ip: str | None) -> None:
        """Count one failed attempt for the account and the IP."""
        ...

    async def record_success(self, account: str, client_ip: str | None) -> None:
        """A successful login: forget the account's failures."""
        ...


def client_ip_key(client_ip: str) -> str:
    """The throttling key of an IP address (IPv6 grouped by /64).

    Raises:
        ValidationError: ``users.invalid_client_ip`` when *client_ip* is not an IP address.
    """
    try:
        address = ipaddress.ip_address(client_ip.strip())
    except (ValueError, AttributeError):
        raise ValidationError("users.invalid_client_ip") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((int(address) >> 64 << 64, 64))}"
    return f"ip:{address}"


class MemoryLoginThrottle:
    """A per-process :class:`LoginThrottle` on the injected clock.

    Args:
        clock: time source (``FakeClock`` in tests).
        account: the policy per account.
        ip: the policy per client IP address.
        max_entries: how many accounts/IPs are tracked at once (least recently used dropped first).
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        account: ThrottlePolicy | None = None,
        ip: ThrottlePolicy | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self._clock = clock or SystemClock()
        self._account = account or ThrottlePolicy()
        self._ip = ip or ThrottlePolicy(free_failures=20, max_failures=1000)
        ttl = max(self._account.window, self._ip.window)
        self._failures: TTLCache[str, deque[float]] = TTLCache(
            maxsize=max_entries, ttl=ttl, timer=self._clock.monotonic
        )

    def __repr__(self) -> str:
        return f"MemoryLoginThrottle(tracked={len(self._failures)})"

    def _keys(self, account: str, client_ip: str | None) -> list[tuple[str, ThrottlePolicy]]:
        keys = [(f"u:{account}", self._account)]
        if client_ip is not None:
            keys.append((client_ip_key(client_ip), self._ip))
        return keys

    def _window(self, key: str, policy: ThrottlePolicy, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - policy.window:
            failures.popleft()
        return failures

    # check and record never await: within one event loop reserve() is atomic

    def _check(self, keys: list[tuple[str, ThrottlePolicy]], now: float) -> None:
        wait = 0.0
        for key, policy in keys:
            wait = max(wait, policy.retry_at(self._window(key, policy, now)) - now)
        if wait > 0:
            raise RateLimitedError("users.login_throttled", retry_after=math.ceil(wait))

    def _record(self, keys: list[tuple[str, ThrottlePolicy]], now: float) -> None:
        for key, policy in keys:
            failures = self._window(key, policy, now)
            failures.append(now)
            while len(failures) > policy.max_failures:
                failures.popleft()
            self._failures[key] = failures  # (re)insert: refreshes the entry's TTL

    async def check(self, account: str, client_ip: str | None) -> None:
        """Raise ``users.login_throttled`` with ``retry_after`` (whole seconds) when not allowed yet."""
        self._check(self._keys(account, client_ip), self._clock.monotonic())

    async def reserve(self, account: str, client_ip: str | None) -> None:
        """Check and count the attempt as a failure in one step (no ``await`` in between)."""
        keys = self._keys(account, client_ip)
        now = self._clock.monotonic()
        self._check(keys, now)
        self._record(keys, now)

    async def release(self, account: str, client_ip: str | None) -> None:
        """Take back the most recent counted attempt of the account and of the IP."""
        for key, _policy in self._keys(account, client_ip):
            failures = self._failures.get(key)
            if failures:
                failures.pop()

    async def record_failure(self, account: str, client_ip: str | None) -> None:
        """Count a failure for the account and the IP."""
        self._record(self._keys(account, client_ip), self._clock.monotonic())

    async def record_success(self, account: str, client_ip: str | None) -> None:
        """Forget the account's failures (the IP's are kept)."""
        self._failures.pop(f"u:{account}", None)
