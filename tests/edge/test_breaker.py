"""The circuit breaker's states (``edge.breaker``), on a clock the test moves. End to end,
with a runner that dies and comes back: ``tests/e2e/test_resilience.py``."""

from __future__ import annotations

import pytest

from busgate.contracts.config import Breaker
from busgate.contracts.errors import CircuitOpen
from busgate.edge.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**kw) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    defaults = {"size": 10, "min_calls": 4, "failure_rate": 50, "open_wait": 5}
    return CircuitBreaker("demo", Breaker(**{**defaults, **kw}), clock), clock


def test_opens_past_the_failure_rate_and_refuses_at_once():
    b, _ = breaker()
    for failed in (False, True, False, True):
        b.check()
        b.record(failed, 0.01)
    assert b.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        b.check()
    assert refused.value.status == 503 and refused.value.code == "circuit_open"
    assert refused.value.retry_after == 5


def test_needs_min_calls_before_judging():
    b, _ = breaker()
    for _ in range(3):
        b.record(True, 0.01)
    assert b.state == "closed"


def test_client_errors_are_not_failures():
    """The edge records ``status >= 500`` as failed; a 4xx is the caller's fault."""
    b, _ = breaker()
    for _ in range(10):
        b.record(False, 0.01)
    assert b.state == "closed"


def test_half_open_lets_a_few_through_then_closes():
    b, clock = breaker(half_open_calls=2)
    for _ in range(4):
        b.record(True, 0.01)
    clock.now += 5.1
    b.check()
    b.check()
    assert b.state == "half_open"
    with pytest.raises(CircuitOpen):
        b.check()  # only half_open_calls at a time
    b.record(False, 0.01)
    b.record(False, 0.01)
    assert b.state == "closed"
    b.check()


def test_a_failure_when_half_open_opens_again():
    b, clock = breaker(half_open_calls=2)
    for _ in range(4):
        b.record(True, 0.01)
    clock.now += 5.1
    b.check()
    b.record(True, 0.01)
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        b.check()


def test_a_trial_call_that_ended_without_an_answer_gives_its_permit_back():
    b, clock = breaker(half_open_calls=1)
    for _ in range(4):
        b.record(True, 0.01)
    clock.now += 5.1
    b.check()
    b.release()  # its client went away
    b.check()


def test_slow_calls_open_it():
    b, _ = breaker(slow_call=1.0, slow_rate=50)
    for _ in range(4):
        b.record(False, 2.0)
    assert b.state == "open"


def test_time_window_forgets_old_calls():
    b, clock = breaker(window="time", size=10)
    for _ in range(3):
        b.record(True, 0.01)
    clock.now += 11
    b.record(True, 0.01)
    assert b.state == "closed"
