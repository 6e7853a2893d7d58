"""Calendar-correct budget periods and the ledger's reset behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maaskit.errors import QuotaExceededError, ValidationError
from maaskit.services.budget import BudgetPeriod, DefaultBudgetLedger, PeriodKind
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.testing.clock import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_monthly_anchor_31_clamps_to_month_end() -> None:
    period = BudgetPeriod(PeriodKind.MONTHLY, anchor_day=31)
    assert period.bounds(utc(2026, 2, 10)) == (utc(2026, 1, 31), utc(2026, 2, 28))
    assert period.bounds(utc(2026, 2, 28)) == (utc(2026, 2, 28), utc(2026, 3, 31))
    assert period.bounds(utc(2028, 2, 15)) == (utc(2028, 1, 31), utc(2028, 2, 29))  # leap year
    assert period.bounds(utc(2028, 2, 29, 12)) == (utc(2028, 2, 29), utc(2028, 3, 31))
    assert period.bounds(utc(2026, 4, 30, 1)) == (utc(2026, 4, 30), utc(2026, 5, 31))
    assert period.bounds(utc(2026, 12, 31)) == (utc(2026, 12, 31), utc(2027, 1, 31))


def test_monthly_default_anchor_and_year_wrap() -> None:
    period = BudgetPeriod(PeriodKind.MONTHLY)
    assert period.bounds(utc(2026, 1, 1)) == (utc(2026, 1, 1), utc(2026, 2, 1))
    assert period.bounds(utc(2025, 12, 31, 23, 59)) == (utc(2025, 12, 1), utc(2026, 1, 1))


def test_daily_periods_follow_dst_in_the_zone() -> None:
    period = BudgetPeriod(PeriodKind.DAILY, timezone="Europe/Berlin")
    # 2026-03-29: clocks go forward, the local day has 23 hours.
    start, end = period.bounds(datetime(2026, 3, 29, 12, tzinfo=BERLIN))
    assert start == datetime(2026, 3, 29, tzinfo=BERLIN)
    assert end is not None
    assert end - start == timedelta(hours=23)
    # 2026-10-25: clocks go back, 25 hours.
    start, end = period.bounds(datetime(2026, 10, 25, 12, tzinfo=BERLIN))
    assert end is not None
    assert end - start == timedelta(hours=25)
    # Just before local midnight belongs to the previous day, even though it's another UTC date.
    start, _ = period.bounds(utc(2026, 6, 30, 21, 59))  # 23:59 CEST
    assert start == datetime(2026, 6, 30, tzinfo=BERLIN)
    start, _ = period.bounds(utc(2026, 6, 30, 22, 0))  # 00:00 CEST July 1st
    assert start == datetime(2026, 7, 1, tzinfo=BERLIN)


def test_weekly_and_yearly() -> None:
    weekly = BudgetPeriod(PeriodKind.WEEKLY, anchor_weekday=6)  # Sundays
    assert weekly.bounds(utc(2026, 1, 1)) == (utc(2025, 12, 28), utc(2026, 1, 4))
    yearly = BudgetPeriod(PeriodKind.YEARLY, anchor_month=2, anchor_day=29)
    assert yearly.bounds(utc(2027, 3, 1)) == (utc(2027, 2, 28), utc(2028, 2, 29))
    assert yearly.bounds(utc(2028, 2, 28)) == (utc(2027, 2, 28), utc(2028, 2, 29))


def test_no_reset_and_naive_time() -> None:
    assert BudgetPeriod().bounds(utc(2030, 5, 5)) == (utc(1970, 1, 1), None)
    with pytest.raises(ValidationError):
        BudgetPeriod(PeriodKind.DAILY).bounds(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timezone": "Mars/Olympus"},
        {"anchor_day": 0},
        {"anchor_day": 32},
        {"anchor_month": 13},
        {"anchor_weekday": 7},
        {"anchor_day": True},
        {"kind": "hourly"},
    ],
)
def test_bad_periods_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValidationError, ValueError)):
        BudgetPeriod(**kwargs)  # type: ignore[arg-type]


zones = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
)


@given(
    kind=st.sampled_from([PeriodKind.DAILY, PeriodKind.WEEKLY, PeriodKind.MONTHLY, PeriodKind.YEARLY]),
    zone=zones,
    day=st.integers(1, 31),
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)),
)
def test_bounds_contain_now_and_tile_time(kind: PeriodKind, zone: str, day: int, when: datetime) -> None:
    period = BudgetPeriod(kind, timezone=zone, anchor_day=day, anchor_month=2)
    start, end = period.bounds(when)
    assert end is not None
    assert start <= when < end
    # periods tile time: the next period starts exactly at this one's end, the previous ends at start
    assert period.bounds(end)[0] == end
    assert period.bounds(start - timedelta(microseconds=1))[1] == start
    assert period.bounds_ts(when.timestamp()) == (int(start.timestamp()), int(end.timestamp()))


async def test_reset_happens_exactly_once_per_period() -> None:
    clock = FakeClock(utc(2026, 1, 30, 12))
    ledger = DefaultBudgetLedger(MemoryLimitsStore(clock), clock)
    monthly = BudgetPeriod(PeriodKind.MONTHLY, anchor_day=31)
    open_january = await ledger.reserve("k", 600, 1_000, monthly)  # period Dec 31 - Jan 31
    clock.set(utc(2026, 1, 31, 0, 0, 1))
    feb = await ledger.reserve("k", 1_000, 1_000, monthly)  # reset: a fresh budget
    with pytest.raises(QuotaExceededError):
        await ledger.reserve("k", 1, 1_000, monthly)
    clock.set(utc(2026, 2, 27, 23))  # still the same period: no second reset
    with pytest.raises(QuotaExceededError) as info:
        await ledger.reserve("k", 1, 1_000, monthly)
    assert info.value.retry_after == 3600.0
    await ledger.commit(open_january, 400)  # settles into the January period
    await ledger.release(feb)
    now = await ledger.balance("k", 1_000, monthly)
    assert (now.committed_micros, now.reserved_micros) == (0, 0)
    assert now.period_start == utc(2026, 1, 31)
    assert now.period_end == utc(2026, 2, 28)
    before = await ledger.balance("k", 1_000, monthly)
    clock.set(utc(2026, 2, 28))
    after = await ledger.balance("k", 1_000, monthly)
    assert after.period_start == before.period_end
    assert open_january.period_start == utc(2025, 12, 31)


async def test_ledger_validates_input() -> None:
    clock = FakeClock()
    ledger = DefaultBudgetLedger(MemoryLimitsStore(clock), clock)
    for account, amount, limit in [("", 1, 1), ("a\n", 1, 1), ("a", -1, 5), ("a", 1.5, 5), ("a", 1, 2**60)]:
        with pytest.raises(ValidationError) as info:
            await ledger.reserve(account, amount, limit)  # type: ignore[arg-type]
        assert info.value.code == "budget.invalid"
    reservation = await ledger.reserve("a", 1, 5)
    with pytest.raises(ValidationError):
        await ledger.commit(reservation, -3)
    with pytest.raises(ValidationError):
        await ledger.reserve("a", 1, 5, period="monthly")  # type: ignore[arg-type]
