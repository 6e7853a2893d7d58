"""The circuit breaker's state machine against a reference model (hypothesis stateful test)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from maaskit.errors import UnavailableError
from maaskit.services.upstream import CircuitBreaker, CircuitState
from maaskit.testing.clock import FakeClock

THRESHOLD = 3
WINDOW = 10.0
OPEN_FOR = 5.0


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(
            "u", self.clock, failure_threshold=THRESHOLD, window=WINDOW, open_duration=OPEN_FOR
        )
        # reference model
        self.state = "closed"
        self.failures: list[float] = []
        self.opened_at = 0.0
        self.probe = False
        self.in_flight: list[bool] = []  # admitted calls (True = the probe)

    def _model_state(self) -> str:
        if self.state == "open" and self.clock.monotonic() >= self.opened_at + OPEN_FOR:
            self.state = "half_open"
            self.probe = False
        return self.state

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def call(self) -> None:
        state = self._model_state()
        should_refuse = state == "open" or (state == "half_open" and self.probe)
        if should_refuse:
            with pytest.raises(UnavailableError) as info:
                self.breaker.before_call()
            assert info.value.code == "upstream.circuit_open"
            assert info.value.params["retry_after"] > 0
            return
        is_probe = self.breaker.before_call()
        assert not should_refuse
        assert is_probe == (state == "half_open")
        if is_probe:
            self.probe = True
        self.in_flight.append(is_probe)

    @precondition(lambda self: bool(self.in_flight))
    @rule(index=st.integers(min_value=0), outcome=st.sampled_from(["success", "failure", "release"]))
    def finish(self, index: int, outcome: str) -> None:
        is_probe = self.in_flight.pop(index % len(self.in_flight))
        now = self.clock.monotonic()
        state = self._model_state()
        if outcome == "success":
            self.breaker.record_success(is_probe)
            if is_probe and self.probe and state == "half_open":
                self.state, self.probe, self.failures = "closed", False, []
        elif outcome == "failure":
            self.breaker.record_failure(is_probe)
            if is_probe:
                if self.probe and state == "half_open":
                    self.state, self.opened_at, self.probe, self.failures = "open", now, False, []
            elif state == "closed":
                self.failures = [t for t in [*self.failures, now] if t > now - WINDOW]
                if len(self.failures) >= THRESHOLD:
                    self.state, self.opened_at, self.failures = "open", now, []
        else:
            self.breaker.release(is_probe)
            if is_probe and self.probe and state == "half_open":
                self.probe = False

    @invariant()
    def agrees_with_model(self) -> None:
        assert self.breaker.state == CircuitState(self._model_state())
        assert self.breaker.probe_in_flight == self.probe
        assert sum(self.in_flight) <= 1  # never two probes at once


TestBreaker = BreakerMachine.TestCase
TestBreaker.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_threshold_window_and_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("u", clock, failure_threshold=2, window=10, open_duration=5)
    breaker.record_failure()
    clock.advance(11)  # the first failure left the window
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(UnavailableError) as info:
        breaker.before_call()
    assert info.value.params == {"upstream": "u", "retry_after": 5.0}
    clock.advance(5)
    assert breaker.before_call() is True  # the single probe
    with pytest.raises(UnavailableError):
        breaker.before_call()  # a second caller waits for the probe
    breaker.record_failure(True)
    assert breaker.state is CircuitState.OPEN  # the probe failed: open again for a full period
    clock.advance(5)
    probe = breaker.before_call()
    breaker.release(probe)  # cancelled probe frees the slot
    probe = breaker.before_call()
    breaker.record_success(probe)
    assert breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"window": 0}, {"open_duration": float("inf")}])
def test_invalid_breaker_settings(kwargs: dict[str, float]) -> None:
    from maaskit.errors import ValidationError

    with pytest.raises(ValidationError):
        CircuitBreaker("u", FakeClock(), **kwargs)  # type: ignore[arg-type]
