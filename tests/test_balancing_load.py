"""Load-aware and randomised strategies: least_connections, weighted_least_connections,
least_response_time, power_of_two, random."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.balancing import BalancingStrategy, LiveServer, make_strategy
from maitred.balancing.latency import DECAY_TIME, expected_latency, record_latency


def pool(*weights: int) -> list[LiveServer]:
    return [
        LiveServer(chr(ord("a") + index), "127.0.0.1", 9000 + index, weight=weight)
        for index, weight in enumerate(weights)
    ]


def watched(name: str, servers: list[LiveServer], seed: int = 1) -> BalancingStrategy:
    """A strategy wired to hear ``active`` changes, as the Balancer wires it."""
    strategy = make_strategy(name, rng=random.Random(seed))
    if strategy.tracks_active:
        for server in servers:
            server.active_watcher = strategy.on_active_change
    strategy.rebuild(servers, 0.0)
    return strategy


def pick(strategy: BalancingStrategy, now: float = 0.0) -> LiveServer:
    server = strategy.pick(None, now)
    assert server is not None
    return server


def one_at_a_time(strategy: BalancingStrategy, count: int, now: float = 0.0) -> list[str]:
    """Sequential requests: each finishes before the next starts."""
    chosen = []
    for _ in range(count):
        server = pick(strategy, now)
        server.active += 1
        chosen.append(server.id)
        server.active -= 1
    return chosen


def held(strategy: BalancingStrategy, count: int) -> Counter[str]:
    """``count`` concurrent requests that all stay open."""
    for _ in range(count):
        pick(strategy).active += 1
    return Counter({server.id: server.active for server in strategy.eligible})


# --- least_connections ------------------------------------------------------


def test_least_connections_goes_to_the_least_busy_server() -> None:
    servers = pool(1, 1, 1)
    strategy = watched("least_connections", servers)
    servers[0].active, servers[1].active, servers[2].active = 3, 1, 2
    assert pick(strategy).id == "b"


def test_least_connections_rotates_ties_instead_of_favouring_the_first_server() -> None:
    strategy = watched("least_connections", pool(1, 1, 1))
    assert one_at_a_time(strategy, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_least_connections_tie_rotation_skips_the_busy_server() -> None:
    servers = pool(1, 1, 1)
    strategy = watched("least_connections", servers)
    servers[1].active = 5
    assert one_at_a_time(strategy, 6) == ["a", "c", "a", "c", "a", "c"]


def test_least_connections_ignores_weights() -> None:
    strategy = watched("least_connections", pool(9, 1))
    assert held(strategy, 20) == {"a": 10, "b": 10}


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=12),
    st.lists(st.integers(min_value=0, max_value=40), max_size=120),
)
def test_least_connections_always_picks_a_minimum(size: int, operations: list[int]) -> None:
    # Each operation either opens a request (even) or closes one on some server (odd),
    # exercising the heap through the active watcher as the data plane would.
    servers = pool(*([1] * size))
    strategy = watched("least_connections", servers)
    for operation in operations:
        if operation % 2 == 0:
            chosen = pick(strategy)
            assert chosen.active == min(server.active for server in servers)
            chosen.active += 1
        else:
            busy = [server for server in servers if server.active]
            if busy:
                busy[operation % len(busy)].active -= 1


# --- weighted_least_connections ---------------------------------------------


def test_weighted_least_connections_holds_connections_in_weight_ratio() -> None:
    strategy = watched("weighted_least_connections", pool(3, 1))
    assert held(strategy, 40) == {"a": 30, "b": 10}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=4),
)
def test_weighted_least_connections_fills_servers_by_weight(
    weights: list[int], rounds: int
) -> None:
    strategy = watched("weighted_least_connections", pool(*weights))
    counts = held(strategy, rounds * sum(weights))
    assert counts == {server.id: rounds * server.weight for server in strategy.eligible}


def test_weighted_least_connections_breaks_ties_by_weighted_turns() -> None:
    # Sequential requests leave every server idle, so every pick is a tie: the tie
    # rotation must then follow the weights rather than the list order.
    strategy = watched("weighted_least_connections", pool(5, 3, 1))
    sequence = one_at_a_time(strategy, 9 * 20)
    for start in range(0, len(sequence), 9):
        assert Counter(sequence[start : start + 9]) == {"a": 5, "b": 3, "c": 1}


def test_weighted_least_connections_pick_excluding_skips_the_best() -> None:
    servers = pool(1, 1, 1)
    strategy = watched("weighted_least_connections", servers)
    servers[1].active, servers[2].active = 1, 2
    assert strategy.pick_excluding(None, 0.0, {servers[0]}) is servers[1]
    assert strategy.pick_excluding(None, 0.0, set(servers)) is None


# --- least_response_time ----------------------------------------------------


def test_peak_ewma_takes_a_slower_sample_at_once_and_a_faster_one_gradually() -> None:
    server = pool(1)[0]
    record_latency(server, 0.1, 1.0)
    assert server.ewma == 0.1
    record_latency(server, 0.5, 1.0)
    assert server.ewma == 0.5
    record_latency(server, 0.1, 2.0)
    assert 0.1 < server.ewma < 0.5
    assert expected_latency(server, 2.0 + DECAY_TIME) == pytest.approx(server.ewma / 2.718, 0.01)


def test_least_response_time_prefers_the_fast_server() -> None:
    servers = pool(1, 1, 1)
    strategy = watched("least_response_time", servers)
    for server, latency in zip(servers, (0.2, 0.01, 0.05), strict=True):
        strategy.observe(server, latency, 1.0)
    assert set(one_at_a_time(strategy, 20, now=1.0)) == {"b"}


def test_least_response_time_weighs_latency_by_outstanding_requests() -> None:
    servers = pool(1, 1)
    strategy = watched("least_response_time", servers)
    strategy.observe(servers[0], 0.01, 1.0)
    strategy.observe(servers[1], 0.1, 1.0)
    servers[0].active = 20  # 0.01 s × 21 outstanding beats 0.1 s × 1
    assert pick(strategy, 1.0) is servers[1]


def test_least_response_time_tries_unsampled_servers_first_but_not_in_a_pile() -> None:
    servers = pool(1, 1, 1)
    strategy = watched("least_response_time", servers)
    strategy.observe(servers[0], 0.01, 1.0)
    first = pick(strategy, 1.0)
    assert first in servers[1:], "an idle server without a sample is tried first"
    first.active += 1
    second = pick(strategy, 1.0)
    assert second in servers[1:] and second is not first
    second.active += 1
    assert pick(strategy, 1.0) is servers[0], "unsampled busy servers are avoided"


def test_a_slow_server_is_tried_again_after_its_estimate_decays() -> None:
    fast, slow = servers = pool(1, 1)
    strategy = watched("least_response_time", servers)
    strategy.observe(fast, 0.01, 0.0)
    strategy.observe(slow, 1.0, 0.0)
    chosen_at: list[float] = []
    now = 0.0
    while now < 20 * DECAY_TIME:  # the fast server keeps answering in 10 ms
        now += 0.5
        server = pick(strategy, now)
        server.active += 1
        server.active -= 1
        strategy.observe(server, 0.01 if server is fast else 1.0, now)
        if server is slow:
            chosen_at.append(now)
    # 1 s decays below 10 ms after ln(100) ≈ 4.6 decay times, then is probed again,
    # answers slowly, and waits about as long again: a probe, not a flood.
    assert chosen_at, "the slow server was never tried again"
    assert chosen_at[0] > 4 * DECAY_TIME
    assert len(chosen_at) <= 5


def test_least_response_time_with_weights_favours_the_heavier_of_equals() -> None:
    servers = pool(1, 4)
    strategy = watched("least_response_time", servers)
    for server in servers:
        strategy.observe(server, 0.05, 1.0)
    counts = held(strategy, 50)
    assert counts["b"] == 40 and counts["a"] == 10


# --- power_of_two -----------------------------------------------------------


def test_power_of_two_with_two_servers_always_takes_the_less_loaded() -> None:
    servers = pool(1, 1)
    strategy = watched("power_of_two", servers)
    servers[0].active = 3
    assert {pick(strategy).id for _ in range(200)} == {"b"}


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=3, max_value=30), st.integers(min_value=0, max_value=2**32))
def test_power_of_two_never_picks_the_single_busiest_server(size: int, seed: int) -> None:
    servers = pool(*([1] * size))
    strategy = watched("power_of_two", servers, seed)
    rng = random.Random(seed)
    for server in servers:
        server.active = rng.randint(0, 5)
    busiest = rng.choice(servers)
    busiest.active = 10
    for _ in range(50):
        assert pick(strategy) is not busiest


def test_power_of_two_keeps_held_load_even() -> None:
    strategy = watched("power_of_two", pool(*([1] * 10)))
    counts = held(strategy, 1_000)
    assert max(counts.values()) - min(counts.values()) <= 6


def test_power_of_two_is_reproducible_with_a_seeded_rng() -> None:
    first = one_at_a_time(watched("power_of_two", pool(1, 2, 3), seed=5), 50)
    assert first == one_at_a_time(watched("power_of_two", pool(1, 2, 3), seed=5), 50)


# --- random -----------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (3, 1), (5, 3, 1, 1)])
def test_random_shares_follow_the_weights(weights: tuple[int, ...]) -> None:
    strategy = watched("random", pool(*weights), seed=42)
    draws = 40_000
    counts = Counter(one_at_a_time(strategy, draws))
    for server in strategy.eligible:
        share = server.weight / sum(weights)
        # Five standard deviations of a binomial: fails by chance about once in 3 million.
        tolerance = 5 * (share * (1 - share) / draws) ** 0.5
        assert abs(counts[server.id] / draws - share) < tolerance


def test_random_is_reproducible_with_a_seeded_rng() -> None:
    first = one_at_a_time(watched("random", pool(1, 1, 1), seed=9), 30)
    assert first == one_at_a_time(watched("random", pool(1, 1, 1), seed=9), 30)
    assert first != one_at_a_time(watched("random", pool(1, 1, 1), seed=10), 30)


@pytest.mark.parametrize(
    "name",
    ["least_connections", "weighted_least_connections", "least_response_time", "power_of_two"],
)
def test_an_empty_set_picks_none(name: str) -> None:
    strategy = watched(name, [])
    assert strategy.pick(None, 0.0) is None
    assert strategy.pick_excluding(None, 0.0, {pool(1)[0]}) is None
