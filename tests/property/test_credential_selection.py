"""Selection invariants: weighted RR proportions exact per cycle, round robin fair, least used minimal."""

from __future__ import annotations

import asyncio
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.errors import UnavailableError
from maaskit.services.credentials import DefaultCredentialPool, Lease, Strategy, smooth_weighted_schedule
from maaskit.storage.memory.credentials import MemoryCredentialStore
from maaskit.testing.clock import FakeClock


def _pool(strategy: Strategy, weights: list[int]) -> tuple[DefaultCredentialPool, list[str]]:
    async def build() -> tuple[DefaultCredentialPool, list[str]]:
        pool = DefaultCredentialPool(MemoryCredentialStore(), clock=FakeClock(), strategy=strategy)
        await pool.load()
        ids = [(await pool.add("u", f"key-{i}", weight=w)).id for i, w in enumerate(weights)]
        return pool, ids

    return asyncio.run(build())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=8), st.integers(1, 3))
def test_weighted_proportions_exact_over_each_cycle(weights: list[int], cycles: int) -> None:
    pool, ids = _pool(Strategy.WEIGHTED, weights)
    from math import gcd

    g = 0
    for w in weights:
        g = gcd(g, w)
    cycle = sum(weights) // g
    picks = []
    for _ in range(cycle * cycles):
        lease = pool.acquire("m")
        picks.append(lease.credential_id)
        lease.release(200)
    for c in range(cycles):
        counts = Counter(picks[c * cycle : (c + 1) * cycle])
        assert counts == {i: w // g for i, w in zip(ids, weights, strict=True)}


@given(st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_smooth_schedule_never_bunches_beyond_the_weight(weights: list[int]) -> None:
    schedule = smooth_weighted_schedule(weights)
    total = sum(weights)
    assert Counter(schedule) == dict(enumerate(weights))
    # no bunching: in every prefix of k picks, index i is picked fewer than k * w / total + 1 times
    # (a picked entry held the largest current value, which is positive, so its value never
    # falls to -total). A bound on runs does not hold: [2, 2, 16] picks 16 six times in a row.
    counts = [0] * len(weights)
    for k, pick in enumerate(schedule, 1):
        counts[pick] += 1
        for i, w in enumerate(weights):
            assert counts[i] * total < k * w + total


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10), st.integers(1, 60))
def test_round_robin_is_fair(n: int, requests: int) -> None:
    pool, ids = _pool(Strategy.ROUND_ROBIN, [1] * n)
    counts = Counter()
    for _ in range(requests):
        lease = pool.acquire("m")
        counts[lease.credential_id] += 1
        lease.release(200)
    values = [counts[i] for i in ids]
    assert max(values) - min(values) <= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=80))
def test_least_used_picks_a_minimum_in_flight(n: int, ops: list[tuple[bool, int]]) -> None:
    pool, _ids = _pool(Strategy.LEAST_USED, [1] * n)
    held: list[Lease] = []
    for acquire, index in ops:
        if acquire or not held:
            in_flight = {s.credential_id: s.in_flight for s in pool.stats()}
            lease = pool.acquire("m")
            assert in_flight[lease.credential_id] == min(in_flight.values())
            held.append(lease)
        else:
            held.pop(index % len(held)).release(200)
    for lease in held:
        lease.release()
    assert all(s.in_flight == 0 for s in pool.stats())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=2, max_size=6),
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([200, 401, 429, 500]), st.floats(0, 100)), max_size=40
    ),
)
def test_never_hands_out_a_cooling_or_disabled_credential(
    weights: list[int], events: list[tuple[int, int, float]]
) -> None:
    for strategy in Strategy:
        pool, _ids = _pool(strategy, weights)
        clock = pool._clock
        assert isinstance(clock, FakeClock)
        codes: set[str] = set()
        for _, status, advance in events:
            try:
                lease = pool.acquire("m")
            except UnavailableError as exc:
                codes.add(exc.code)
                clock.advance(seconds=advance)
                continue
            stats = {s.credential_id: s for s in pool.stats()}
            assert stats[lease.credential_id].enabled
            cooldown = stats[lease.credential_id].cooldown_until
            assert cooldown is None or cooldown <= clock.now()
            lease.release(status, retry_after=advance / 2)
            clock.advance(seconds=advance / 3)
        assert codes <= {"credentials.exhausted", "credentials.disabled"}
