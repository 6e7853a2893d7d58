"""Budget stores: the memory store keeps a bounded number of settled reservations; replicas on
one SQLite file settle a reservation once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from maaskit.errors import NotFoundError, ValidationError
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.storage.ports.limits import BudgetLine, ReserveRequest
from maaskit.testing import FakeClock


async def test_settled_reservations_are_bounded_and_oldest_forgotten() -> None:
    store = MemoryLimitsStore(FakeClock(), keep_settled=3)
    line = (BudgetLine("acct", 0, None, 1_000_000),)
    for i in range(5):
        assert (await store.reserve(ReserveRequest(f"r{i}", 10, line))).ok
        await store.settle(f"r{i}", 7)
    # the three newest still answer idempotently; the two oldest are forgotten
    for i in (2, 3, 4):
        again = await store.settle(f"r{i}", 7)
        assert again.already_settled
        assert again.committed_micros == 7
    for i in (0, 1):
        with pytest.raises(NotFoundError):
            await store.settle(f"r{i}", 7)
    # forgetting never touches the money: five commits of 7, nothing reserved
    balance = await store.balance("acct", 0)
    assert (balance.committed_micros, balance.reserved_micros) == (35, 0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_keep_settled_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValidationError):
        MemoryLimitsStore(keep_settled=bad)  # type: ignore[arg-type]


def test_reservation_ids_differ_in_a_forked_child() -> None:
    import os

    from maaskit.services.budget import new_reservation_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes one id and leaves at once
        os.write(write, new_reservation_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    parent = new_reservation_id()
    assert child[:16] != parent[:16]


async def test_two_replicas_on_one_sqlite_file_settle_a_reservation_once(tmp_path: Path) -> None:
    # SQLite has no row locks: both replicas read the reservation open, and the second's update
    # then changed nothing, which raised budget.reservation_mismatch instead of answering
    # already_settled
    from maaskit.clock import SystemClock
    from maaskit.services.budget import DefaultBudgetLedger
    from maaskit.storage.sql import Database
    from maaskit.storage.sql.budget import SqlLedgerStore

    url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    first, second = Database(url), Database(url)
    await first.migrate()
    try:
        a = DefaultBudgetLedger(SqlLedgerStore(first), SystemClock())
        b = DefaultBudgetLedger(SqlLedgerStore(second), SystemClock())
        reservations = [await a.reserve("acct", 100, 10**9) for _ in range(40)]
        outcomes = await asyncio.gather(
            *(x for r in reservations for x in (a.commit(r, 50), b.commit(r, 50)))
        )
        for one, other in zip(outcomes[::2], outcomes[1::2], strict=True):
            assert sorted([one.already_settled, other.already_settled]) == [False, True]
            assert one.committed_micros == other.committed_micros == 50
        balance = await a.balance("acct", 10**9)
        assert (balance.committed_micros, balance.reserved_micros) == (50 * 40, 0)
    finally:
        await first.aclose()
        await second.aclose()
