"""DefaultUsageService: buffering, batching, idempotency, requeue, shutdown drain, overflow."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from maaskit.errors import UnavailableError, ValidationError
from maaskit.services.usage import DefaultUsageService, UsageQuery, UsageRecord, UsageRow, UsageService
from maaskit.storage.memory.usage import MemoryUsageStore
from maaskit.testing.clock import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WIDE = {"start": T0 - timedelta(days=1), "end": T0 + timedelta(days=1)}
#: Upper bound on waiting for the background flusher; never asserted on.
SAFETY = 10.0


def rec(request_id: str, **kw: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "key_id": "k1",
        "owner_id": "u1",
        "model": "m",
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "cost_micros": 10,
        "created_at": T0,
    }
    fields.update(kw)
    return UsageRecord(**fields)


class RecordingStore(MemoryUsageStore):
    """A memory store that remembers every batch and lets tests wait for writes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.changed = asyncio.Event()

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        await super().add_many(records)
        self.batches.append([r.request_id for r in records])
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(SAFETY):
            while len(self) < count:
                self.changed.clear()
                await self.changed.wait()


class FlakyStore(RecordingStore):
    """Fails the first *failures* writes; with *after_write*, fails after storing (lost ack)."""

    def __init__(self, failures: int, *, after_write: bool = False) -> None:
        super().__init__()
        self.failures = failures
        self.after_write = after_write
        self.attempts = 0

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            if self.after_write:
                await MemoryUsageStore.add_many(self, records)
            raise UnavailableError("database.unavailable")
        await super().add_many(records)


class BlockingStore(RecordingStore):
    """Blocks inside add_many until released; with *commit_first*, stores before blocking."""

    def __init__(self, *, commit_first: bool = False) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.commit_first = commit_first
        self.blocking = True

    async def add_many(self, records: Sequence[UsageRecord]) -> None:
        if self.blocking:
            if self.commit_first:
                await MemoryUsageStore.add_many(self, records)
            self.entered.set()
            await self.release.wait()
        await super().add_many(records)


def ids(records: Sequence[UsageRecord]) -> list[str]:
    return [r.request_id for r in records]


# -- construction ------------------------------------------------------------------------------


def test_is_a_usage_service(clock: FakeClock) -> None:
    assert isinstance(DefaultUsageService(MemoryUsageStore(), clock), UsageService)


@pytest.mark.parametrize(
    "kw",
    [
        {"flush_interval": 0},
        {"flush_interval": -1.0},
        {"flush_interval": math.nan},
        {"flush_interval": math.inf},
        {"flush_interval": True},
        {"flush_interval": "1"},
        {"retry_delay": 0},
        {"batch_size": 0},
        {"batch_size": 1.5},
        {"batch_size": True},
        {"batch_size": 10, "max_buffer": 9},
        {"overflow": "block"},
    ],
)
def test_bad_configuration_is_refused(clock: FakeClock, kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        DefaultUsageService(MemoryUsageStore(), clock, **kw)
    assert err.value.code == "config.invalid"
    assert err.value.params["setting"].startswith("usage.")


async def test_record_refuses_other_objects(clock: FakeClock) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    with pytest.raises(ValidationError) as err:
        usage.record({"request_id": "x"})  # type: ignore[arg-type]
    assert err.value.code == "usage.invalid"
    assert usage.stats().recorded == 0


# -- buffering and explicit flush --------------------------------------------------------------


async def test_record_buffers_and_flush_writes_in_batches(clock: FakeClock) -> None:
    store = RecordingStore()
    usage = DefaultUsageService(store, clock, batch_size=3)
    for i in range(7):
        usage.record(rec(f"r{i}"))
    assert len(store) == 0
    assert usage.stats().buffered == 7
    clock.advance(5)
    assert await usage.flush() == 7
    assert store.batches == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    stats = usage.stats()
    assert (stats.buffered, stats.recorded, stats.written, stats.batches) == (0, 7, 7, 3)
    assert stats.last_flush_at == clock.now()
    assert await usage.flush() == 0


async def test_duplicate_request_ids_are_counted_once(clock: FakeClock) -> None:
    store = RecordingStore()
    usage = DefaultUsageService(store, clock, batch_size=2)
    usage.record(rec("a", cost_micros=1))
    usage.record(rec("a", cost_micros=1))
    usage.record(rec("b", cost_micros=2))
    await usage.flush()
    usage.record(rec("a", cost_micros=1))
    usage.record(rec("b", cost_micros=2))
    await usage.flush()
    total = await usage.totals(**WIDE)
    assert (total.requests, total.cost_micros) == (2, 3)


# -- failures and cancellation -----------------------------------------------------------------


async def test_failed_flush_requeues_the_batch_in_order(clock: FakeClock) -> None:
    store = FlakyStore(failures=2)
    usage = DefaultUsageService(store, clock, batch_size=2)
    for i in range(3):
        usage.record(rec(f"r{i}"))
    for _ in range(2):
        with pytest.raises(UnavailableError):
            await usage.flush()
        assert ids(usage.pending()) == ["r0", "r1", "r2"]
    usage.record(rec("r3"))
    assert await usage.flush() == 4
    assert ids(usage.pending()) == []
    assert store.batches == [["r0", "r1"], ["r2", "r3"]]
    stats = usage.stats()
    assert (stats.failed_flushes, stats.last_error, stats.written) == (2, "UnavailableError", 4)


async def test_failure_in_a_later_batch_keeps_earlier_batches_written(clock: FakeClock) -> None:
    store = FlakyStore(failures=0)
    usage = DefaultUsageService(store, clock, batch_size=2)
    for i in range(5):
        usage.record(rec(f"r{i}"))
    original = store.add_many
    calls = 0

    async def second_fails(records: Sequence[UsageRecord]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise UnavailableError("database.unavailable")
        await original(records)

    store.add_many = second_fails  # type: ignore[method-assign]
    with pytest.raises(UnavailableError):
        await usage.flush()
    assert [await store.get(f"r{i}") is not None for i in range(5)] == [True, True, False, False, False]
    assert ids(usage.pending()) == ["r2", "r3", "r4"]


async def test_write_that_succeeded_but_reported_failure_is_not_doubled(clock: FakeClock) -> None:
    store = FlakyStore(failures=1, after_write=True)
    usage = DefaultUsageService(store, clock)
    usage.record(rec("a", cost_micros=5))
    usage.record(rec("b", cost_micros=7))
    with pytest.raises(UnavailableError):
        await usage.flush()
    assert await usage.flush() == 2
    total = await usage.totals(**WIDE)
    assert (total.requests, total.cost_micros) == (2, 12)


@pytest.mark.parametrize("commit_first", [False, True])
async def test_cancelled_flush_requeues_the_batch(clock: FakeClock, commit_first: bool) -> None:
    store = BlockingStore(commit_first=commit_first)
    usage = DefaultUsageService(store, clock, batch_size=2)
    for i in range(3):
        usage.record(rec(f"r{i}", cost_micros=1))
    flushing = asyncio.create_task(usage.flush())
    await store.entered.wait()
    usage.record(rec("late", cost_micros=1))
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert ids(usage.pending()) == ["r0", "r1", "r2", "late"]
    assert usage.stats().failed_flushes == 1
    store.blocking = False
    await usage.flush()
    total = await usage.totals(**WIDE)
    assert (total.requests, total.cost_micros) == (4, 4)


async def test_flusher_cancelled_mid_write_by_shutdown_requeues_its_batch(clock: FakeClock) -> None:
    store = BlockingStore(commit_first=True)
    usage = DefaultUsageService(store, clock, batch_size=2, flush_interval=3600)
    await usage.start()
    usage.record(rec("r0"))
    usage.record(rec("r1"))  # reaches batch_size: wakes the flusher
    async with asyncio.timeout(SAFETY):
        await store.entered.wait()
    closing = asyncio.create_task(usage.aclose())
    await asyncio.sleep(0)
    closing.cancel()  # a shutdown that gives up cancels the in-flight write
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert ids(usage.pending()) == ["r0", "r1"]
    # The write had reached the store before it was cancelled; writing again does not double it.
    store.blocking = False
    await usage.aclose()
    assert (await usage.totals(**WIDE)).requests == 2
    assert usage.pending() == ()


# -- the background flusher --------------------------------------------------------------------


async def test_flush_is_triggered_by_batch_size(clock: FakeClock) -> None:
    store = RecordingStore()
    async with DefaultUsageService(store, clock, batch_size=5, flush_interval=3600) as usage:
        for i in range(4):
            usage.record(rec(f"r{i}"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(store) == 0  # below batch_size and the interval is an hour away
        usage.record(rec("r4"))
        await store.wait_for(5)
        assert store.batches == [["r0", "r1", "r2", "r3", "r4"]]


async def test_flush_is_triggered_by_interval(clock: FakeClock) -> None:
    store = RecordingStore()
    async with DefaultUsageService(store, clock, batch_size=1000, flush_interval=0.005) as usage:
        usage.record(rec("only"))
        await store.wait_for(1)
        assert usage.stats().buffered == 0


async def test_flusher_retries_after_failures(clock: FakeClock) -> None:
    store = FlakyStore(failures=3)
    async with DefaultUsageService(store, clock, flush_interval=0.005) as usage:
        usage.record(rec("a"))
        usage.record(rec("b"))
        await store.wait_for(2)
    assert store.attempts == 4
    assert usage.stats().failed_flushes == 3


async def test_shutdown_drains_records_recorded_just_before(clock: FakeClock) -> None:
    store = RecordingStore()
    usage = DefaultUsageService(store, clock, batch_size=100, flush_interval=3600)
    async with usage:
        for i in range(250):
            usage.record(rec(f"r{i}"))
    assert len(store) == 250
    assert usage.pending() == ()


async def test_shutdown_waits_for_an_in_flight_write_then_drains(clock: FakeClock) -> None:
    store = BlockingStore()
    usage = DefaultUsageService(store, clock, batch_size=2, flush_interval=3600)
    await usage.start()
    usage.record(rec("r0"))
    usage.record(rec("r1"))
    async with asyncio.timeout(SAFETY):
        await store.entered.wait()
    usage.record(rec("r2"))  # arrives while the first batch is being written
    closing = asyncio.create_task(usage.aclose())
    await asyncio.sleep(0)
    with pytest.raises(UnavailableError) as err:
        usage.record(rec("too-late"))
    assert err.value.code == "usage.closed"
    store.release.set()
    await closing
    assert store.batches == [["r0", "r1"], ["r2"]]


async def test_failed_shutdown_keeps_records_pending_and_says_how_many(clock: FakeClock) -> None:
    store = FlakyStore(failures=10**6)
    usage = DefaultUsageService(store, clock)
    usage.record(rec("a"))
    usage.record(rec("b"))
    with pytest.raises(UnavailableError) as err:
        await usage.aclose()
    assert err.value.code == "usage.unflushed"
    assert err.value.params == {"pending": 2}
    assert ids(usage.pending()) == ["a", "b"]


async def test_closed_service_refuses_records_and_restart(clock: FakeClock) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    await usage.aclose()
    await usage.aclose()  # idempotent
    with pytest.raises(UnavailableError, match="closed"):
        usage.record(rec("a"))
    with pytest.raises(UnavailableError) as err:
        await usage.start()
    assert err.value.code == "usage.closed"


async def test_start_is_idempotent(clock: FakeClock) -> None:
    store = RecordingStore()
    usage = DefaultUsageService(store, clock, batch_size=1, flush_interval=3600)
    await usage.start()
    await usage.start()
    usage.record(rec("a"))
    await store.wait_for(1)
    await usage.aclose()
    assert store.batches == [["a"]]


# -- overflow ----------------------------------------------------------------------------------


async def test_full_buffer_refuses_by_default(clock: FakeClock) -> None:
    usage = DefaultUsageService(FlakyStore(failures=1), clock, batch_size=2, max_buffer=3)
    for i in range(3):
        usage.record(rec(f"r{i}"))
    assert usage.saturated
    with pytest.raises(UnavailableError) as err:
        usage.record(rec("r3"))
    assert err.value.code == "usage.buffer_full"
    assert err.value.params == {"limit": 3}
    with pytest.raises(UnavailableError):
        await usage.ping()
    with pytest.raises(UnavailableError):
        await usage.flush()  # the store is still down: everything stays queued
    assert ids(usage.pending()) == ["r0", "r1", "r2"]
    assert await usage.flush() == 3
    assert not usage.saturated
    await usage.ping()
    usage.record(rec("r3"))
    stats = usage.stats()
    assert (stats.refused, stats.dropped, stats.recorded) == (1, 0, 4)


async def test_full_buffer_drops_oldest_when_asked_and_counts_it(clock: FakeClock) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock, batch_size=2, max_buffer=3, overflow="drop_oldest")
    for i in range(5):
        usage.record(rec(f"r{i}"))
    assert ids(usage.pending()) == ["r2", "r3", "r4"]
    stats = usage.stats()
    assert (stats.dropped, stats.refused, stats.recorded) == (2, 0, 5)


async def test_requeued_batches_may_exceed_max_buffer(clock: FakeClock) -> None:
    store = BlockingStore()
    usage = DefaultUsageService(store, clock, batch_size=2, max_buffer=2)
    usage.record(rec("r0"))
    usage.record(rec("r1"))
    flushing = asyncio.create_task(usage.flush())
    await store.entered.wait()
    usage.record(rec("r2"))
    usage.record(rec("r3"))
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert ids(usage.pending()) == ["r0", "r1", "r2", "r3"]  # nothing accepted is lost


# -- reports -----------------------------------------------------------------------------------


async def test_report_and_totals_delegate_to_the_store(clock: FakeClock) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    usage.record(rec("a", key_id="k1", cost_micros=1))
    usage.record(rec("b", key_id="k2", cost_micros=2, status="error"))
    usage.record(rec("c", key_id="k2", cost_micros=4, created_at=T0 + timedelta(days=1)))
    await usage.flush()
    rows = await usage.report(**WIDE, group_by=["key"])
    assert [(r.key_id, r.requests, r.errors, r.cost_micros) for r in rows] == [
        ("k1", 1, 0, 1),
        ("k2", 1, 1, 2),
    ]
    assert await usage.totals(**WIDE, key_id="k2") == UsageRow(
        requests=1, errors=1, prompt_tokens=1, completion_tokens=2, total_tokens=3, cost_micros=2
    )
    assert (await usage.totals(**WIDE, key_id="nobody")).requests == 0


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"start": datetime(2026, 1, 1), "end": T0}, "start"),
        ({"start": T0, "end": T0}, "end"),
        ({"start": T0 + timedelta(seconds=1), "end": T0}, "end"),
        ({"start": T0, "end": "tomorrow"}, "end"),
        ({"start": T0, "end": datetime.max.replace(tzinfo=timezone(-timedelta(hours=14)))}, "end"),
        ({"start": datetime.min.replace(tzinfo=timezone(timedelta(hours=14))), "end": T0}, "start"),
        ({**WIDE, "group_by": ("week",)}, "group_by"),
        ({**WIDE, "group_by": ("key", "key")}, "group_by"),
        ({**WIDE, "group_by": 3}, "group_by"),
        ({**WIDE, "key_id": ""}, "key_id"),
        ({**WIDE, "model": "m\x00"}, "model"),
    ],
)
async def test_report_refuses_bad_queries(clock: FakeClock, kw: dict[str, Any], field: str) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    with pytest.raises(ValidationError) as err:
        await usage.report(**kw)
    assert err.value.code == "usage.invalid"
    assert err.value.params["field"] == field


def test_query_accepts_a_single_dimension_string() -> None:
    assert UsageQuery(**WIDE, group_by="day").group_by == ("day",)  # type: ignore[arg-type]


def test_repr_shows_no_record_contents(clock: FakeClock) -> None:
    usage = DefaultUsageService(MemoryUsageStore(), clock)
    usage.record(rec("secret-request-id"))
    assert "secret-request-id" not in repr(usage)
    assert "buffered=1" in repr(usage)
