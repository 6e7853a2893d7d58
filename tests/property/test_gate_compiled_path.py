"""The memory gate's compiled plan path (``MemoryLimitsStore.compile_bound``) decides exactly like the
general path: the same decisions, refusals, headers, settlements and final state, step by step; and
an admission's headers, rendered without the per-rate decisions, are exactly theirs.

Two gates over two stores on two fake clocks advanced alike; one has its compiled path switched off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from maaskit.errors import MaasError
from maaskit.services.rate_limit import AdmissionPlan, DefaultLimitsGate, GateDecision
from maaskit.storage.memory.limits import MemoryLimitsStore
from maaskit.testing.clock import FakeClock

# (advance ms, estimate, reserve micros, what to do with an earlier open admission:
#  None = nothing, ("settle", index, tokens, micros) or ("release", index))
actions = st.one_of(
    st.none(),
    st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 400), st.integers(0, 3_000)),
    st.tuples(st.just("release"), st.integers(0, 40)),
)
steps = st.lists(
    st.tuples(st.integers(0, 20_000), st.integers(0, 300), st.integers(0, 2_000), actions),
    min_size=1,
    max_size=40,
)


def _view(decision: GateDecision) -> tuple[Any, ...]:
    refusal = decision.refusal
    ticket = decision.ticket
    headers = decision.headers()  # an admission renders them without building the per-rate decisions
    assert decision.rates is not None
    assert decision.headers() == headers  # ... and they are the per-rate decisions' headers
    return (
        decision.allowed,
        None if refusal is None else (refusal.code, refusal.params),
        headers,
        decision.budget_available_micros,
        None if ticket is None else (ticket.reservation_id is None, ticket.reserved_micros),
    )


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.one_of(st.none(), st.integers(1, 5)),
    tpm=st.one_of(st.none(), st.integers(1, 800)),
    budget=st.one_of(st.none(), st.integers(0, 5_000)),
    steps=steps,
)
def test_compiled_and_general_paths_agree(
    rpm: int | None, tpm: int | None, budget: int | None, steps: list[tuple[int, int, int, Any]]
) -> None:
    async def run() -> None:
        clocks = (FakeClock(), FakeClock())
        stores = (MemoryLimitsStore(clocks[0]), MemoryLimitsStore(clocks[1]))
        gates = (DefaultLimitsGate(stores[0], clocks[0]), DefaultLimitsGate(stores[1], clocks[1]))
        gates[1]._compile_bound = None  # the general path
        account = None if budget is None else "key:k"
        plans = tuple(
            AdmissionPlan.simple("k", rpm=rpm, tpm=tpm, budget_account=account, budget_limit_micros=budget)
            for _ in gates
        )
        open_: list[tuple[GateDecision, GateDecision]] = []
        for n, (wait_ms, estimate, reserve, action) in enumerate(steps):
            for clock in clocks:
                clock.advance(seconds=wait_ms / 1000)
            decisions = [
                gate._acquire_plan_now(plan, estimate, reserve, f"r{n}")
                for gate, plan in zip(gates, plans, strict=True)
            ]
            assert _view(decisions[0]) == _view(decisions[1])
            if decisions[0].allowed:
                open_.append((decisions[0], decisions[1]))
            if action is not None and open_:
                pair = open_.pop(action[1] % len(open_))
                results = []
                for gate, decision in zip(gates, pair, strict=True):
                    try:
                        if action[0] == "settle":
                            results.append(gate._settle_admitted_now(decision, action[2], action[3]))
                        else:
                            results.append(gate._settle_admitted_now(decision, None, None))
                    except MaasError as exc:
                        results.append(exc.code)
                assert results[0] == results[1]
        assert plans[0]._admitter is not None
        assert plans[1]._admitter is None
        # a bound plan creates its entries up front; an empty one behaves exactly like an absent one
        rates = [{k: v for k, v in store._rates.items() if v[0]} for store in stores]
        budgets = [{k: v for k, v in store._budgets.items() if any(v)} for store in stores]
        assert rates[0] == rates[1]
        assert budgets[0] == budgets[1]
        if account is not None:
            assert await stores[0].balance(account, 0) == await stores[1].balance(account, 0)

    asyncio.run(run())
