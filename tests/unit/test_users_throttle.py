"""MemoryLoginThrottle: free failures, growing delay, the hard hourly cap, IP keys."""

from __future__ import annotations

import pytest

from maaskit.errors import RateLimitedError, ValidationError
from maaskit.services.login_throttle import LoginThrottle, MemoryLoginThrottle, ThrottlePolicy, client_ip_key
from maaskit.testing.clock import FakeClock


async def test_hard_cap_of_failures_per_hour(clock: FakeClock) -> None:
    # no delay at all: only the cap limits
    throttle = MemoryLoginThrottle(clock, account=ThrottlePolicy(free_failures=0, base_delay=0, max_delay=0))
    assert isinstance(throttle, LoginThrottle)
    for _ in range(100):
        await throttle.check("bob", None)
        await throttle.record_failure("bob", None)
        clock.advance(1)
    with pytest.raises(RateLimitedError) as info:
        await throttle.check("bob", None)
    assert info.value.retry_after == 3600 - 100
    clock.advance(3600 - 100)
    await throttle.check("bob", None)  # the oldest failure left the window


async def test_delay_doubles_up_to_the_maximum(clock: FakeClock) -> None:
    throttle = MemoryLoginThrottle(clock, account=ThrottlePolicy(free_failures=2, base_delay=1, max_delay=8))
    waits = []
    for _ in range(8):
        try:
            await throttle.check("bob", None)
        except RateLimitedError as exc:
            waits.append(exc.retry_after)
            clock.advance(exc.retry_after or 0)
        await throttle.record_failure("bob", None)
    assert waits == [1, 2, 4, 8, 8]  # after failures 3..7


async def test_success_clears_account_but_not_ip(clock: FakeClock) -> None:
    throttle = MemoryLoginThrottle(
        clock, account=ThrottlePolicy(free_failures=1), ip=ThrottlePolicy(free_failures=1)
    )
    for _ in range(2):
        await throttle.record_failure("bob", "192.0.2.1")
    await throttle.record_success("bob", "192.0.2.1")
    await throttle.check("bob", None)
    with pytest.raises(RateLimitedError):
        await throttle.check("bob", "192.0.2.1")


def test_ip_keys() -> None:
    assert client_ip_key("192.0.2.1") == "ip:192.0.2.1"
    assert client_ip_key("::ffff:192.0.2.1") == "ip:192.0.2.1"
    assert client_ip_key("2001:db8::1") == client_ip_key("2001:db8::ffff:1") == "ip:2001:db8::/64"
    for bad in ("", "1.2.3.4, 5.6.7.8", "unknown", "300.1.1.1"):
        with pytest.raises(ValidationError):
            client_ip_key(bad)


def test_bad_policy() -> None:
    with pytest.raises(ValidationError):
        ThrottlePolicy(max_failures=0)
    with pytest.raises(ValidationError):
        ThrottlePolicy(window=0)


async def test_reserve_checks_and_counts_in_one_step(clock: FakeClock) -> None:
    throttle = MemoryLoginThrottle(clock, account=ThrottlePolicy(free_failures=2, base_delay=1, max_delay=8))
    for _ in range(3):  # two free failures, and the third attempt is still allowed
        await throttle.reserve("bob", None)
    with pytest.raises(RateLimitedError) as info:  # counted already, before any outcome is known
        await throttle.reserve("bob", None)
    assert info.value.retry_after == 1
    with pytest.raises(RateLimitedError):  # a refused reservation counts nothing: still 1 s
        await throttle.check("bob", None)
    clock.advance(1)
    await throttle.reserve("bob", None)
    with pytest.raises(RateLimitedError) as info:
        await throttle.check("bob", None)
    assert info.value.retry_after == 2


async def test_release_takes_one_reservation_back(clock: FakeClock) -> None:
    throttle = MemoryLoginThrottle(
        clock, account=ThrottlePolicy(free_failures=1), ip=ThrottlePolicy(free_failures=1)
    )
    for _ in range(5):  # five right passwords from one address spend nothing
        await throttle.reserve("bob", "192.0.2.1")
        await throttle.release("bob", "192.0.2.1")
        await throttle.record_success("bob", "192.0.2.1")
    await throttle.reserve("carol", "192.0.2.1")
    await throttle.reserve("dave", "192.0.2.1")  # the IP's free failure is spent by carol only
    with pytest.raises(RateLimitedError):
        await throttle.check("erin", "192.0.2.1")
    await throttle.release("nobody", None)  # nothing to take back: no error
    with pytest.raises(ValidationError):
        await throttle.reserve("bob", "not an ip")
    await throttle.check("bob", None)  # the refused reservation counted nothing
