"""Passive outlier ejection, with time passed in by the test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.health.outlier import Ejection, OutlierDetector, OutlierSettings

BASE = 30.0


def _detector(
    servers: int = 4,
    consecutive_failures: int = 5,
    max_ejected_percent: int = 50,
    max_ejection_time: float = 300.0,
) -> OutlierDetector:
    settings = OutlierSettings(
        consecutive_failures=consecutive_failures,
        base_ejection_time=BASE,
        max_ejection_time=max_ejection_time,
        max_ejected_percent=max_ejected_percent,
    )
    return OutlierDetector(settings, [f"s{index}" for index in range(1, servers + 1)])


def _fail(detector: OutlierDetector, server_id: str, times: int, now: float) -> Ejection | None:
    """Report ``times`` failures; return the last result (earlier ones must be None)."""
    for _ in range(times - 1):
        assert detector.record(server_id, False, now) is None
    return detector.record(server_id, False, now)


def test_defaults_follow_the_issue() -> None:
    settings = OutlierSettings()
    assert settings.consecutive_failures == 5
    assert settings.base_ejection_time == 30.0
    assert settings.max_ejection_time == 300.0
    assert settings.max_ejected_percent == 50


def test_ejects_after_the_threshold_of_consecutive_failures() -> None:
    detector = _detector()
    assert _fail(detector, "s1", 4, now=100.0) is None
    assert not detector.is_ejected("s1")
    ejection = detector.record("s1", False, 100.5)
    assert ejection == Ejection(
        "s1", ejected_at=100.5, duration=BASE, until=130.5, ejections_in_a_row=1
    )
    assert ejection.duration == BASE
    assert detector.is_ejected("s1")
    assert detector.ejected() == {"s1": 130.5}
    assert detector.ejections_total == 1
    assert "s1 ejected for 30s" in ejection.describe()


def test_a_success_resets_the_failure_count() -> None:
    detector = _detector()
    _fail(detector, "s1", 4, now=0.0)
    assert detector.consecutive_failures("s1") == 4
    assert detector.record("s1", True, 0.0) is None
    assert detector.consecutive_failures("s1") == 0
    assert _fail(detector, "s1", 4, now=0.0) is None
    assert not detector.is_ejected("s1")


def test_failures_of_one_server_do_not_count_for_another() -> None:
    detector = _detector()
    _fail(detector, "s1", 3, now=0.0)
    _fail(detector, "s2", 3, now=0.0)
    assert detector.ejected() == {}


def test_returns_when_the_ejection_time_is_over() -> None:
    detector = _detector()
    _fail(detector, "s1", 5, now=10.0)
    assert detector.next_return() == 40.0
    assert detector.due_returns(39.999) == []
    assert detector.is_ejected("s1")
    assert detector.due_returns(40.0) == ["s1"]
    assert not detector.is_ejected("s1")
    assert detector.next_return() is None
    assert detector.due_returns(1000.0) == []  # returned once, not again


def test_results_while_ejected_are_ignored() -> None:
    detector = _detector()
    _fail(detector, "s1", 5, now=0.0)
    # Requests that were in flight at ejection time finish with errors later.
    assert _fail(detector, "s1", 20, now=1.0) is None
    assert detector.ejected() == {"s1": 30.0}
    detector.due_returns(30.0)
    # And they did not count towards the next ejection.
    assert _fail(detector, "s1", 4, now=30.0) is None
    assert not detector.is_ejected("s1")


def test_repeat_ejections_double_up_to_the_cap() -> None:
    detector = _detector(max_ejection_time=300.0)
    now = 0.0
    durations = []
    for _ in range(7):
        ejection = _fail(detector, "s1", 5, now)
        assert ejection is not None
        durations.append(ejection.duration)
        now = ejection.until
        assert detector.due_returns(now) == ["s1"]
    assert durations == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    assert detector.ejections_in_a_row("s1") == 7


def test_time_back_in_rotation_is_forgiven_one_step_per_base_ejection_time() -> None:
    detector = _detector()
    now = 0.0
    for _ in range(3):  # 30, 60, 120
        ejection = _fail(detector, "s1", 5, now)
        assert ejection is not None
        now = ejection.until
        detector.due_returns(now)
    # 2.5 base periods of good behaviour take two steps off the three.
    ejection = _fail(detector, "s1", 5, now + 2.5 * BASE)
    assert ejection is not None
    assert ejection.ejections_in_a_row == 2
    assert ejection.duration == 60.0
    # A long quiet time starts over at the base time.
    detector.due_returns(ejection.until)
    ejection = _fail(detector, "s1", 5, ejection.until + 3600.0)
    assert ejection is not None
    assert ejection.duration == BASE


def test_an_active_check_pass_brings_an_ejected_server_back() -> None:
    detector = _detector()
    _fail(detector, "s1", 5, now=0.0)
    assert detector.active_check_passed("s1", now=2.0)
    assert not detector.is_ejected("s1")
    assert detector.due_returns(100.0) == []
    # Not ejected (or unknown): nothing to do.
    assert not detector.active_check_passed("s1", now=3.0)
    assert not detector.active_check_passed("nope", now=3.0)
    # It still counts as a repeat when it fails again soon.
    ejection = _fail(detector, "s1", 5, now=4.0)
    assert ejection is not None
    assert ejection.duration == 60.0


def test_never_more_than_max_ejected_percent_of_the_pool() -> None:
    detector = _detector(servers=4, max_ejected_percent=50)
    assert _fail(detector, "s1", 5, now=0.0) is not None
    assert _fail(detector, "s2", 5, now=1.0) is not None
    # A third would be 75% > 50%: refused, the server stays in rotation.
    assert _fail(detector, "s3", 5, now=2.0) is None
    assert not detector.is_ejected("s3")
    assert detector.ejections_refused == 1
    assert set(detector.ejected()) == {"s1", "s2"}
    # Once one returns, s3's next failure ejects it (its streak kept growing).
    assert detector.due_returns(30.0) == ["s1"]
    ejection = detector.record("s3", False, 31.0)
    assert ejection is not None
    assert ejection.server_id == "s3"


@pytest.mark.parametrize(
    ("servers", "percent", "allowed"),
    [
        (1, 50, 1),  # one may always go (Envoy's rule): backups or a fast 503 take over
        (2, 50, 1),
        (3, 50, 1),
        (4, 50, 2),
        (10, 10, 1),
        (10, 35, 3),
        (5, 100, 5),
        (20, 1, 1),
        (3, 0, 0),  # 0 turns ejection off
    ],
)
def test_how_many_may_be_ejected_at_once(servers: int, percent: int, allowed: int) -> None:
    detector = _detector(servers=servers, max_ejected_percent=percent)
    for index in range(1, servers + 1):
        _fail(detector, f"s{index}", 5, now=0.0)
    assert len(detector.ejected()) == allowed
    assert detector.ejections_refused == servers - allowed


def test_consecutive_failures_zero_disables_ejection() -> None:
    detector = _detector(consecutive_failures=0)
    assert _fail(detector, "s1", 100, now=0.0) is None
    assert detector.ejected() == {}
    assert detector.ejections_refused == 0


def test_threshold_of_one_ejects_on_the_first_failure() -> None:
    detector = _detector(consecutive_failures=1)
    assert detector.record("s1", False, 0.0) is not None


def test_unknown_servers_are_ignored() -> None:
    detector = _detector()
    assert _fail(detector, "gone", 10, now=0.0) is None
    assert not detector.is_ejected("gone")
    assert detector.consecutive_failures("gone") == 0


def test_pool_changes_keep_survivors_and_forget_the_removed() -> None:
    detector = _detector(servers=4)
    _fail(detector, "s1", 5, now=0.0)
    _fail(detector, "s2", 3, now=0.0)
    detector.set_servers(["s1", "s2", "s3", "s4", "s5"])
    assert detector.is_ejected("s1")
    assert detector.consecutive_failures("s2") == 3
    # Removing the ejected server frees its place under the cap.
    detector.set_servers(["s2", "s3"])
    assert detector.ejected() == {}
    assert _fail(detector, "s2", 2, now=1.0) is not None
    # Added back, it starts afresh.
    detector.set_servers(["s1", "s2", "s3"])
    assert not detector.is_ejected("s1")
    assert detector.ejections_in_a_row("s1") == 0


def test_reconfigure_applies_to_later_ejections() -> None:
    detector = _detector()
    _fail(detector, "s1", 5, now=0.0)
    detector.reconfigure(OutlierSettings(consecutive_failures=2, base_ejection_time=10.0))
    assert detector.ejected() == {"s1": 30.0}
    ejection = _fail(detector, "s2", 2, now=0.0)
    assert ejection is not None
    assert ejection.duration == 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consecutive_failures": -1}, "consecutive_failures"),
        ({"base_ejection_time": 0}, "base_ejection_time"),
        ({"base_ejection_time": 60, "max_ejection_time": 30}, "max_ejection_time"),
        ({"max_ejected_percent": 101}, "max_ejected_percent"),
        ({"max_ejected_percent": -1}, "max_ejected_percent"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierSettings(**kwargs)  # type: ignore[arg-type]


def test_ejection_time_of_the_nth_ejection() -> None:
    settings = OutlierSettings(base_ejection_time=1.0, max_ejection_time=1000.0)
    assert [settings.ejection_time(n) for n in (1, 2, 3, 10, 11, 500)] == [
        1.0,
        2.0,
        4.0,
        512.0,
        1000.0,
        1000.0,
    ]


# -- property: the cap holds whatever happens -------------------------------------

_events = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "tick", "check"]),
        st.integers(0, 5),  # server index
        st.floats(0.0, 40.0),  # time step
    ),
    max_size=200,
)


@given(events=_events, percent=st.integers(1, 100), threshold=st.integers(1, 4))
def test_the_cap_and_the_bookkeeping_hold_for_any_sequence(
    events: list[tuple[str, int, float]], percent: int, threshold: int
) -> None:
    servers = [f"s{index}" for index in range(6)]
    detector = OutlierDetector(
        OutlierSettings(threshold, base_ejection_time=10.0, max_ejected_percent=percent),
        servers,
    )
    cap = max(1, percent * len(servers) // 100)
    now = 0.0
    for kind, index, step in events:
        now += step
        server_id = servers[index]
        was_ejected = detector.is_ejected(server_id)
        if kind == "tick":
            for returned in detector.due_returns(now):
                assert not detector.is_ejected(returned)
        elif kind == "check":
            assert detector.active_check_passed(server_id, now) == was_ejected
        else:
            ejection = detector.record(server_id, kind == "ok", now)
            if ejection is not None:
                assert not was_ejected
                assert ejection.server_id == server_id
                assert 10.0 <= ejection.duration <= 300.0
        ejected = detector.ejected()
        assert len(ejected) <= cap
        assert all(until > now or kind != "tick" for until in ejected.values())
        next_return = detector.next_return()
        assert next_return == (min(ejected.values()) if ejected else None)
