"""HealthMonitor: results in, states, logs, counters and callbacks out (no sockets)."""

from __future__ import annotations

import logging

import pytest

from maitred.health.checker import CheckTarget
from maitred.health.monitor import HealthMonitor
from maitred.health.spec import CheckSpec
from maitred.health.state import HealthState, Transition

HEALTHY = HealthState.HEALTHY
FAILING = HealthState.FAILING
UNHEALTHY = HealthState.UNHEALTHY
RECOVERING = HealthState.RECOVERING

SPEC = CheckSpec(healthy_threshold=2, unhealthy_threshold=3)
SERVER = "web-127.0.0.1-9001"


def _monitor(
    **specs: CheckSpec,
) -> tuple[HealthMonitor, list[tuple[str, HealthState, HealthState]]]:
    monitor = HealthMonitor()
    seen: list[tuple[str, HealthState, HealthState]] = []
    monitor.on_transition.append(lambda server_id, old, new: seen.append((server_id, old, new)))
    monitor.set_servers(specs or {SERVER: SPEC})
    return monitor, seen


def test_results_drive_the_state_and_every_transition_is_told() -> None:
    monitor, seen = _monitor()
    assert monitor.state(SERVER) is HEALTHY
    for _ in range(3):
        monitor.record(SERVER, False, "connect refused")
    assert monitor.state(SERVER) is UNHEALTHY
    assert not monitor.in_rotation(SERVER)
    assert monitor.record(SERVER, True, "status 200") == Transition(UNHEALTHY, RECOVERING)
    monitor.record(SERVER, True, "status 200")
    assert monitor.in_rotation(SERVER)
    assert seen == [
        (SERVER, HEALTHY, FAILING),
        (SERVER, FAILING, UNHEALTHY),
        (SERVER, UNHEALTHY, RECOVERING),
        (SERVER, RECOVERING, HEALTHY),
    ]
    assert monitor.last_detail(SERVER) == "status 200"


def test_transitions_are_counted_per_server_and_state() -> None:
    monitor, _ = _monitor()
    for _ in range(2):
        for _ in range(3):
            monitor.record(SERVER, False, "status 503")
        for _ in range(2):
            monitor.record(SERVER, True, "status 200")
    assert monitor.transitions == {
        (SERVER, FAILING): 2,
        (SERVER, UNHEALTHY): 2,
        (SERVER, RECOVERING): 2,
        (SERVER, HEALTHY): 2,
    }


def test_every_transition_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    monitor, _ = _monitor()
    with caplog.at_level(logging.INFO, logger="maitred.health"):
        for _ in range(3):
            monitor.record(SERVER, False, "connect refused")
        monitor.record(SERVER, True, "status 200")
        monitor.record(SERVER, True, "status 200")
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "maitred.health"]
    assert records == [
        (logging.INFO, f"server {SERVER} is now failing (1 consecutive failure: connect refused)"),
        (
            logging.WARNING,
            f"server {SERVER} is now unhealthy (3 consecutive failures: connect refused)",
        ),
        (logging.INFO, f"server {SERVER} is now recovering (1 consecutive success: status 200)"),
        (logging.INFO, f"server {SERVER} is now healthy (2 consecutive successes: status 200)"),
    ]


def test_results_without_a_transition_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    monitor, seen = _monitor()
    with caplog.at_level(logging.DEBUG, logger="maitred.health"):
        for _ in range(10):
            assert monitor.record(SERVER, True, "status 200") is None
    assert not [r for r in caplog.records if r.name == "maitred.health"]
    assert seen == []
    assert monitor.transitions == {}


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    monitor, seen = _monitor()

    def broken(server_id: str, old: HealthState, new: HealthState) -> None:
        raise RuntimeError("boom")

    monitor.on_transition.insert(0, broken)
    with caplog.at_level(logging.ERROR, logger="maitred.health"):
        monitor.record(SERVER, False, "status 500")
    assert seen == [(SERVER, HEALTHY, FAILING)]
    assert monitor.state(SERVER) is FAILING
    assert any("callback failed" in r.getMessage() for r in caplog.records)


def test_untracked_servers_are_in_rotation_and_their_results_ignored() -> None:
    monitor, seen = _monitor()
    assert monitor.state("no-check") is None
    assert monitor.in_rotation("no-check")
    assert not monitor.needs_fast_checks("no-check")
    assert monitor.record("no-check", False, "connect refused") is None
    assert monitor.states() == {SERVER: HEALTHY}
    assert seen == []


def test_fast_checks_are_wanted_whenever_not_plainly_healthy() -> None:
    monitor, _ = _monitor()
    wanted = [monitor.needs_fast_checks(SERVER)]
    for result in (False, False, False, True, True):
        monitor.record(SERVER, result)
        wanted.append(monitor.needs_fast_checks(SERVER))
    # healthy, failing, failing, unhealthy, recovering, healthy
    assert wanted == [False, True, True, True, True, False]


def test_initial_state_comes_from_the_spec() -> None:
    monitor, seen = _monitor(a=CheckSpec(initial_state=UNHEALTHY), b=CheckSpec())
    assert monitor.states() == {"a": UNHEALTHY, "b": HEALTHY}
    assert not monitor.in_rotation("a")
    assert monitor.needs_fast_checks("a")
    assert seen == []  # starting is not a transition


def test_reconfiguring_keeps_states_and_takes_new_thresholds() -> None:
    monitor, seen = _monitor(a=SPEC, b=SPEC)
    monitor.record("a", False)
    monitor.record("b", False)
    for _ in range(3):
        monitor.record("b", False)
    monitor.set_servers(
        {"a": CheckSpec(unhealthy_threshold=2), "b": SPEC, "c": SPEC},
    )
    assert monitor.states() == {"a": FAILING, "b": UNHEALTHY, "c": HEALTHY}
    assert monitor.record("a", False) == Transition(FAILING, UNHEALTHY)
    # Removed servers are forgotten, counters included.
    monitor.set_servers({"a": SPEC})
    assert monitor.states() == {"a": UNHEALTHY}
    assert all(server_id == "a" for server_id, _ in monitor.transitions)
    assert monitor.record("b", True) is None


def test_set_targets_takes_the_checker_targets() -> None:
    monitor = HealthMonitor()
    monitor.set_targets(
        [
            CheckTarget("p-h-1", "127.0.0.1", 1, CheckSpec(unhealthy_threshold=1)),
            CheckTarget("p-h-2", "127.0.0.1", 2, CheckSpec()),
        ]
    )
    assert monitor.record("p-h-1", False) == Transition(HEALTHY, UNHEALTHY)
    assert monitor.record("p-h-2", False) == Transition(HEALTHY, FAILING)
