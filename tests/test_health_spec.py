"""Check settings and the check schedule, as pure functions."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from maitred.config import Pool
from maitred.config.model import HealthCheck
from maitred.health.checker import CheckTarget, targets_from_pools
from maitred.health.schedule import JITTER, check_times, first_check_delay, next_check_delay
from maitred.health.spec import CheckSpec, parse_expect_status
from maitred.health.state import HealthState

# -- expect_status ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        (200, ((200, 200),)),
        ("204", ((204, 204),)),
        ("200-299", ((200, 299),)),
        (" 200 - 299 ", ((200, 299),)),
        ("2xx", ((200, 299),)),
        ("3XX", ((300, 399),)),
        ([200, "301-302", "4xx"], ((200, 200), (301, 302), (400, 499))),
        (((200, 399),), ((200, 399),)),  # already parsed: passes through
        ([[200, 204]], ((200, 204),)),
    ],
)
def test_expect_status_forms(value: object, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_expect_status(value) == ranges


@pytest.mark.parametrize(
    "value", [[], "abc", "99", "600", "299-200", "6xx", True, 2.5, [200, None], "200-"]
)
def test_expect_status_rejects_nonsense(value: object) -> None:
    with pytest.raises(ValueError):
        parse_expect_status(value)


def test_expects_checks_every_range() -> None:
    spec = CheckSpec(expect_status=parse_expect_status([200, "300-302"]))
    assert [spec.expects(status) for status in (199, 200, 201, 299, 300, 302, 303)] == [
        False,
        True,
        False,
        False,
        True,
        True,
        False,
    ]


def test_default_expectation_is_200_to_399() -> None:
    spec = CheckSpec()
    assert spec.expects(200) and spec.expects(302) and spec.expects(399)
    assert not spec.expects(199) and not spec.expects(400) and not spec.expects(503)


# -- CheckSpec ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "fall_interval", "fast"),
    [
        (5.0, None, 5.0 / 3),
        (0.6, None, 0.2),
        (0.2, None, 0.1),  # a third would be below 100 ms
        (0.05, None, 0.05),  # never slower than the interval itself
        (5.0, 0.5, 0.5),
    ],
)
def test_fast_interval(interval: float, fall_interval: float | None, fast: float) -> None:
    spec = CheckSpec(interval=interval, fall_interval=fall_interval)
    assert spec.fast_interval == pytest.approx(fast)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "udp"},
        {"path": "health"},
        {"path": "/a b"},
        {"host": ""},
        {"host": "a\r\nX-Evil: 1"},
        {"interval": 0},
        {"timeout": -1},
        {"fall_interval": 0},
        {"healthy_threshold": 0},
        {"unhealthy_threshold": 0},
        {"initial_state": HealthState.FAILING},
        {"expect_status": ()},
    ],
)
def test_spec_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CheckSpec(**kwargs)


def test_from_config_with_todays_health_check_uses_defaults_for_new_keys() -> None:
    check = HealthCheck.model_validate(
        {"path": "/ready", "interval": "2s", "timeout": "500ms", "healthy_threshold": 4}
    )
    spec = CheckSpec.from_config(check)
    assert spec == CheckSpec(
        type="http",
        path="/ready",
        interval=2.0,
        timeout=0.5,
        healthy_threshold=4,
        unhealthy_threshold=3,
    )


def test_from_config_reads_the_new_keys_once_the_model_has_them() -> None:
    check = SimpleNamespace(
        type="tcp",
        path="/health",
        host="api.example.com",
        expect_status=["2xx", 302],
        interval=1.0,
        timeout=0.5,
        fall_interval=0.25,
        healthy_threshold=1,
        unhealthy_threshold=2,
        initial_state="unhealthy",
    )
    spec = CheckSpec.from_config(check)
    assert spec == CheckSpec(
        type="tcp",
        host="api.example.com",
        expect_status=((200, 299), (302, 302)),
        interval=1.0,
        timeout=0.5,
        fall_interval=0.25,
        healthy_threshold=1,
        unhealthy_threshold=2,
        initial_state=HealthState.UNHEALTHY,
    )


def test_targets_from_pools_names_servers_like_the_data_plane() -> None:
    pools = {
        "web": Pool.model_validate(
            {
                "servers": [{"address": "127.0.0.1:9001"}, {"address": "[::1]:9002"}],
                "health_check": {"interval": "1s"},
            }
        ),
        "unchecked": Pool.model_validate({"servers": [{"address": "127.0.0.1:9003"}]}),
    }
    targets = targets_from_pools(pools, lambda pool, host, port: f"{pool}-{host}-{port}")
    spec = CheckSpec(interval=1.0)
    assert targets == [
        CheckTarget("web-127.0.0.1-9001", "127.0.0.1", 9001, spec),
        CheckTarget("web-::1-9002", "::1", 9002, spec),
    ]


# -- schedule -----------------------------------------------------------------------


def _busiest_window(times: list[float], width: float) -> int:
    """The largest number of ``times`` inside any window ``width`` wide."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, time in enumerate(ordered):
        while time - ordered[start] > width:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_every_delay_stays_within_the_jitter_band() -> None:
    rng = random.Random(1)
    delays = [next_check_delay(2.0, rng) for _ in range(10_000)]
    assert min(delays) >= 2.0 * (1 - JITTER)
    assert max(delays) <= 2.0 * (1 + JITTER)
    # Actually jittered, over most of the band, not a constant.
    assert max(delays) - min(delays) > 2.0 * JITTER * 1.9
    first = [first_check_delay(2.0, rng) for _ in range(10_000)]
    assert 0.0 <= min(first) < 0.01 and 1.99 < max(first) <= 2.0


def test_first_checks_of_many_servers_are_spread_over_the_interval() -> None:
    rng = random.Random(7)
    servers = 100
    first_checks = [check_times(1.0, 1, rng)[0] for _ in range(servers)]
    # Without spreading they would all fall in one instant.
    assert _busiest_window([0.0] * servers, 0.01) == servers
    assert _busiest_window(first_checks, 0.01) <= 6


def test_jitter_alone_pulls_servers_started_together_apart() -> None:
    rng = random.Random(11)
    servers, rounds = 100, 30
    schedules = [check_times(1.0, rounds, rng, spread_start=False) for _ in range(servers)]
    assert _busiest_window([s[0] for s in schedules], 0.01) == servers  # lockstep at first
    later = [s[-1] for s in schedules]
    assert _busiest_window(later, 0.01) <= 8
    # Spread over more than half an interval after 30 rounds.
    assert max(later) - min(later) > 0.5
