"""The health state machine, without sockets or clocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.health.state import (
    IN_ROTATION,
    TRANSITIONS,
    HealthState,
    HealthTracker,
    Transition,
)

HEALTHY = HealthState.HEALTHY
FAILING = HealthState.FAILING
UNHEALTHY = HealthState.UNHEALTHY
RECOVERING = HealthState.RECOVERING

OK, FAIL = True, False


def _history(results: list[bool], healthy: int = 2, unhealthy: int = 3) -> HealthTracker:
    tracker = HealthTracker(healthy, unhealthy)
    for result in results:
        tracker.record(result)
    return tracker


# Every (state, result) pair, reached through real histories, both short of the
# threshold ("below") and at it ("reached"). Thresholds: healthy 2, unhealthy 3.
# (id, history leading to the start state, start state, result, expected state)
CASES = [
    ("healthy+ok", [], HEALTHY, OK, HEALTHY),
    ("healthy+ok-long-streak", [OK] * 5, HEALTHY, OK, HEALTHY),
    ("healthy+fail", [], HEALTHY, FAIL, FAILING),
    ("failing+ok", [FAIL, FAIL], FAILING, OK, HEALTHY),
    ("failing+fail-below", [FAIL], FAILING, FAIL, FAILING),
    ("failing+fail-reached", [FAIL, FAIL], FAILING, FAIL, UNHEALTHY),
    ("unhealthy+fail", [FAIL] * 3, UNHEALTHY, FAIL, UNHEALTHY),
    ("unhealthy+ok", [FAIL] * 3, UNHEALTHY, OK, RECOVERING),
    ("recovering+fail", [FAIL] * 3 + [OK], RECOVERING, FAIL, UNHEALTHY),
    ("recovering+ok-reached", [FAIL] * 3 + [OK], RECOVERING, OK, HEALTHY),
]
# With thresholds of 1 the "reached" column of the table is taken at once.
CASES_THRESHOLD_ONE = [
    ("healthy+fail", [], HEALTHY, FAIL, UNHEALTHY),
    ("healthy+ok", [], HEALTHY, OK, HEALTHY),
    ("unhealthy+ok", [FAIL], UNHEALTHY, OK, HEALTHY),
    ("unhealthy+fail", [FAIL], UNHEALTHY, FAIL, UNHEALTHY),
]


@pytest.mark.parametrize(
    ("history", "start", "result", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_transition(
    history: list[bool], start: HealthState, result: bool, expected: HealthState
) -> None:
    tracker = _history(history)
    assert tracker.state is start
    transition = tracker.record(result)
    assert tracker.state is expected
    if expected is start:
        assert transition is None
    else:
        assert transition == Transition(start, expected)


@pytest.mark.parametrize(
    ("history", "start", "result", "expected"),
    [case[1:] for case in CASES_THRESHOLD_ONE],
    ids=[case[0] for case in CASES_THRESHOLD_ONE],
)
def test_thresholds_of_one_skip_failing_and_recovering(
    history: list[bool], start: HealthState, result: bool, expected: HealthState
) -> None:
    tracker = _history(history, healthy=1, unhealthy=1)
    assert tracker.state is start
    tracker.record(result)
    assert tracker.state is expected


def test_the_cases_cover_every_entry_of_the_table() -> None:
    covered = {(case[2], case[3]) for case in CASES}
    assert covered == set(TRANSITIONS)


def test_recovering_stays_until_the_healthy_threshold() -> None:
    tracker = _history([FAIL] * 3, healthy=4)
    assert [tracker.record(OK) for _ in range(4)] == [
        Transition(UNHEALTHY, RECOVERING),
        None,
        None,
        Transition(RECOVERING, HEALTHY),
    ]


def test_failing_stays_until_the_unhealthy_threshold() -> None:
    tracker = _history([], unhealthy=4)
    assert [tracker.record(FAIL) for _ in range(5)] == [
        Transition(HEALTHY, FAILING),
        None,
        None,
        Transition(FAILING, UNHEALTHY),
        None,
    ]


def test_counters_are_consecutive() -> None:
    # Two failures, a success, two failures: never three in a row, never unhealthy.
    tracker = _history([FAIL, FAIL, OK, FAIL, FAIL])
    assert tracker.state is FAILING
    assert (tracker.failures, tracker.successes) == (2, 0)
    # In recovering, a failure throws away the successes gathered so far.
    tracker = _history([FAIL] * 3 + [OK, FAIL, OK], healthy=2)
    assert tracker.state is RECOVERING
    assert tracker.successes == 1


def test_only_healthy_and_failing_are_in_rotation() -> None:
    assert frozenset({HEALTHY, FAILING}) == IN_ROTATION
    assert _history([]).in_rotation
    assert _history([FAIL]).in_rotation
    assert not _history([FAIL] * 3).in_rotation
    assert not _history([FAIL] * 3 + [OK]).in_rotation


def test_initial_state_unhealthy_needs_the_healthy_threshold_first() -> None:
    tracker = HealthTracker(2, 3, initial=UNHEALTHY)
    assert not tracker.in_rotation
    assert tracker.record(OK) == Transition(UNHEALTHY, RECOVERING)
    assert tracker.record(OK) == Transition(RECOVERING, HEALTHY)
    assert tracker.in_rotation


def test_starts_healthy_by_default() -> None:
    tracker = HealthTracker(2, 3)
    assert tracker.state is HEALTHY
    assert (tracker.successes, tracker.failures) == (0, 0)


@pytest.mark.parametrize("initial", [FAILING, RECOVERING])
def test_initial_state_must_be_healthy_or_unhealthy(initial: HealthState) -> None:
    with pytest.raises(ValueError, match="starts healthy or unhealthy"):
        HealthTracker(2, 3, initial=initial)


@pytest.mark.parametrize(("healthy", "unhealthy"), [(0, 3), (2, 0), (-1, -1)])
def test_thresholds_must_be_positive(healthy: int, unhealthy: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        HealthTracker(healthy, unhealthy)


def test_new_thresholds_keep_the_state_and_apply_to_the_next_result() -> None:
    tracker = _history([FAIL], unhealthy=5)
    tracker.set_thresholds(2, 2)
    assert tracker.state is FAILING
    assert tracker.record(FAIL) == Transition(FAILING, UNHEALTHY)


def test_states_are_the_names_the_api_shows() -> None:
    assert [state.value for state in HealthState] == [
        "healthy",
        "failing",
        "unhealthy",
        "recovering",
    ]
    assert str(UNHEALTHY) == "unhealthy"


# -- property: the table agrees with an independent model ------------------------


def _model_state(results: list[bool], healthy: int, unhealthy: int) -> HealthState:
    """A second, table-free statement of the rules: up/down with streaks."""
    up, success_run, failure_run = True, 0, 0
    for result in results:
        if result:
            success_run, failure_run = success_run + 1, 0
            if not up and success_run >= healthy:
                up = True
        else:
            success_run, failure_run = 0, failure_run + 1
            if up and failure_run >= unhealthy:
                up = False
    if up:
        return FAILING if failure_run else HEALTHY
    return RECOVERING if success_run else UNHEALTHY


@given(
    results=st.lists(st.booleans(), max_size=60),
    healthy=st.integers(1, 5),
    unhealthy=st.integers(1, 5),
)
def test_any_history_gives_the_state_its_counters_imply(
    results: list[bool], healthy: int, unhealthy: int
) -> None:
    tracker = HealthTracker(healthy, unhealthy)
    previous = tracker.state
    for result in results:
        transition = tracker.record(result)
        # A transition is reported exactly when the state changed.
        if tracker.state is previous:
            assert transition is None
        else:
            assert transition == Transition(previous, tracker.state)
        previous = tracker.state
        # Counters: exactly one streak is running, and it ends with this result.
        assert (tracker.successes > 0) == result
        assert (tracker.failures > 0) == (not result)
        state = tracker.state
        if state is FAILING:
            assert 1 <= tracker.failures < unhealthy
        if state is RECOVERING:
            assert 1 <= tracker.successes < healthy
        if state is UNHEALTHY:
            assert tracker.successes == 0
        if state is HEALTHY:
            assert tracker.failures == 0
    assert tracker.state is _model_state(results, healthy, unhealthy)
    assert tracker.in_rotation == (tracker.state in (HEALTHY, FAILING))
