"""Speed of login with argon2id's DEFAULT profile (t=3, 64 MiB, p=4) and of permission checks.

Run with ``pytest tests/bench/test_users_bench.py --benchmark-enable``.
"""

from __future__ import annotations

import asyncio

import argon2
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from maaskit.services.audit import DefaultAuditLog
from maaskit.services.login_throttle import MemoryLoginThrottle, ThrottlePolicy
from maaskit.services.rbac import MEMBER_ROLE, DefaultRbacService
from maaskit.services.users import DefaultUserService
from maaskit.storage.memory.audit import MemoryAuditStore
from maaskit.storage.memory.rbac import MemoryRbacStore
from maaskit.storage.memory.users import MemoryUserStore
from maaskit.testing.clock import FakeClock

PW = "correct horse battery"


def _stack() -> tuple[DefaultUserService, DefaultRbacService]:
    clock = FakeClock()
    store = MemoryUserStore()
    audit = DefaultAuditLog(MemoryAuditStore(), clock)
    rbac = DefaultRbacService(MemoryRbacStore(), store, audit, clock)
    users = DefaultUserService(
        store, rbac, audit, clock, hasher=argon2.PasswordHasher(),
        throttle=MemoryLoginThrottle(clock, account=ThrottlePolicy(max_failures=10**9)),
    )  # fmt: skip
    return users, rbac


def test_login_default_profile(benchmark: BenchmarkFixture) -> None:
    users, _ = _stack()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(users.add("bob", PW))
        user = benchmark.pedantic(
            lambda: loop.run_until_complete(users.authenticate("bob", PW)), rounds=5, iterations=1
        )
    finally:
        loop.close()
    assert user.username == "bob"


@pytest.mark.parametrize("hit", [True, False], ids=["granted", "denied"])
def test_check_permission_cached(benchmark: BenchmarkFixture, hit: bool) -> None:
    users, rbac = _stack()
    loop = asyncio.new_event_loop()
    try:
        bob = loop.run_until_complete(users.add("bob", PW, roles=[MEMBER_ROLE]))
        permission = "keys:create" if hit else "users:manage"
        loop.run_until_complete(rbac.check_permission(bob.id, permission))  # warm the caches
        result = benchmark(lambda: loop.run_until_complete(rbac.check_permission(bob.id, permission)))
    finally:
        loop.close()
    assert result is hit


def test_permission_set_allows(benchmark: BenchmarkFixture) -> None:
    users, rbac = _stack()
    loop = asyncio.new_event_loop()
    try:
        bob = loop.run_until_complete(users.add("bob", PW, roles=[MEMBER_ROLE]))
        perms = loop.run_until_complete(rbac.permissions_for(bob.id))
    finally:
        loop.close()
    assert benchmark(perms.allows, "models:use")
