"""The circuit breaker alone, on a clock of the test's: its states against a model of the
rules, and each transition logged once."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.circuit import CLOSED, HALF_OPEN, OPEN, Circuit
from gateway.resilience import BreakerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def circuit(clock: Clock, **settings: object) -> Circuit:
    config = BreakerConfig.model_validate({"failures": 3, "cooldown_seconds": 10, **settings})
    return Circuit(config, "http://u1", "chat", clock)


def test_consecutive_failures_open_it_and_a_cooled_trial_closes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    c = circuit(clock)
    caplog.set_level(logging.INFO, "gateway.circuit")
    for _ in range(2):
        c.failure(False)
    c.success(False)  # a success in between starts the count again
    for _ in range(2):
        c.failure(False)
    assert c.current() == CLOSED
    c.failure(False)
    assert (c.current(), c.admits()) == (OPEN, False)
    c.failure(False)  # calls sent before it opened change nothing
    clock.now = 10
    assert (c.current(), c.admits()) == (HALF_OPEN, True)
    assert c.take() is True
    assert c.admits() is False  # one trial at a time
    c.success(False)  # not the trial: no verdict
    assert c.current() == HALF_OPEN
    c.success(True)
    assert (c.current(), c.admits()) == (CLOSED, True)
    assert [r.getMessage() for r in caplog.records] == [
        "circuit of upstream http://u1 is open",
        "circuit of upstream http://u1 is half-open",
        "circuit of upstream http://u1 is closed",
    ]


def test_a_failed_trial_opens_it_again_and_an_abandoned_one_frees_the_trial() -> None:
    clock = Clock()
    c = circuit(clock, failures=1)
    c.failure(False)
    clock.now = 10
    assert c.take() is True
    c.abandon(True)  # its client hung up
    assert c.admits() is True
    assert c.take() is True
    c.failure(True)
    assert (c.current(), c.admits()) == (OPEN, False)
    clock.now = 19.9
    assert c.current() == OPEN  # the cool-down starts again at the failed trial
    clock.now = 20
    assert c.current() == HALF_OPEN


def test_a_failure_ratio_over_a_window_opens_it() -> None:
    c = circuit(Clock(), failures=100, failure_ratio=0.5, window=4)
    c.failure(False)
    for _ in range(3):
        c.success(False)
    c.failure(False)
    assert c.current() == CLOSED  # 1 of the last 4 (the first has left the window)
    c.failure(False)  # 2 of the last 4
    assert c.current() == OPEN


def test_a_disabled_breaker_never_opens() -> None:
    c = circuit(Clock(), enabled=False, failures=1)
    for _ in range(10):
        c.failure(False)
    assert c.current() == CLOSED


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ok", "fail", "pick", "abandon"]), st.floats(0, 6)),
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_it_follows_the_rules(steps: list[tuple[str, float]], failures: int) -> None:
    """Whatever happens: open admits nothing before its cool-down; half-open admits one
    trial at a time; a success closes only through the trial; the failure count opens."""
    clock = Clock()
    c = circuit(clock, failures=failures)
    consecutive, trial = 0, False
    for action, pause in steps:
        clock.now += pause
        before = c.current()
        if before == OPEN:
            assert not c.admits()
        if action == "pick" and c.admits():
            trial = c.take()
            assert trial == (before == HALF_OPEN)
            assert not trial or not c.admits()
        elif action == "ok":
            c.success(trial)
            if before == CLOSED or trial:
                assert c.current() == CLOSED
                consecutive = 0
            trial = False
        elif action == "fail":
            c.failure(trial)
            consecutive = consecutive + 1 if before == CLOSED else 0
            if trial or consecutive >= failures:
                assert c.current() == OPEN
                consecutive = 0
            trial = False
        elif action == "abandon":
            c.abandon(trial)
            trial = False
