"""The memory limits store keeps a bounded number of settled reservations."""

from __future__ import annotations

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
