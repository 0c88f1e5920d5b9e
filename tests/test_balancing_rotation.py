"""round_robin and weighted_round_robin (smooth): order, exact cycles, smoothness."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.balancing import LiveServer, Strategy, make_strategy


def pool(*weights: int) -> list[LiveServer]:
    return [
        LiveServer(chr(ord("a") + index), "127.0.0.1", 9000 + index, weight=weight)
        for index, weight in enumerate(weights)
    ]


def picks(strategy_name: str, servers: Sequence[LiveServer], count: int) -> list[str]:
    strategy = make_strategy(strategy_name)
    strategy.rebuild(servers, 0.0)
    return names(strategy, count)


def names(strategy: Strategy, count: int) -> list[str]:
    chosen = []
    for _ in range(count):
        server = strategy.pick(None, 0.0)
        assert server is not None
        chosen.append(server.id)
    return chosen


def longest_run(sequence: Sequence[str]) -> int:
    """Longest run of one server, counting runs that wrap around the cycle."""
    doubled = list(sequence) * 2
    longest = current = 1
    for previous, item in zip(doubled, doubled[1:], strict=False):
        current = current + 1 if item == previous else 1
        longest = max(longest, min(current, len(sequence)))
    return longest


# --- round_robin ------------------------------------------------------------


def test_round_robin_takes_every_server_in_turn_and_ignores_weights() -> None:
    assert picks("round_robin", pool(5, 1, 1), 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_carries_on_after_the_last_pick_when_membership_changes() -> None:
    servers = pool(1, 1, 1, 1)
    strategy = make_strategy("round_robin")
    strategy.rebuild(servers, 0.0)
    assert names(strategy, 2) == ["a", "b"]
    strategy.rebuild([servers[0], servers[1], servers[3]], 0.0)  # c goes away
    assert names(strategy, 3) == ["d", "a", "b"]


def test_round_robin_with_no_server_picks_none() -> None:
    strategy = make_strategy("round_robin")
    strategy.rebuild([], 0.0)
    assert strategy.pick(None, 0.0) is None


# --- weighted_round_robin ---------------------------------------------------


def test_smooth_weighted_round_robin_interleaves_5_3_1() -> None:
    sequence = picks("weighted_round_robin", pool(5, 3, 1), 9 * 50)
    for start in range(0, len(sequence), 9):
        cycle = sequence[start : start + 9]
        assert Counter(cycle) == {"a": 5, "b": 3, "c": 1}
        assert cycle == sequence[:9], "every cycle repeats the same interleaving"
    assert longest_run(sequence[:9]) <= 2
    assert "aaaaa" not in "".join(sequence)


def test_smooth_weighted_round_robin_never_bunches_a_heavy_server() -> None:
    # Plain weighted round robin would send a,a,a,a,a,b,c: the NGINX example.
    cycle = picks("weighted_round_robin", pool(5, 1, 1), 7)
    assert Counter(cycle) == {"a": 5, "b": 1, "c": 1}
    assert longest_run(cycle) <= 3


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=8))
def test_every_cycle_gives_each_server_exactly_its_weight(weights: list[int]) -> None:
    servers = pool(*weights)
    total = sum(weights)
    sequence = picks("weighted_round_robin", servers, 3 * total)
    expected = {server.id: server.weight for server in servers}
    for start in range(0, len(sequence), total):
        assert Counter(sequence[start : start + total]) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=6))
def test_any_window_of_picks_is_within_two_of_the_fair_share(weights: list[int]) -> None:
    servers = pool(*weights)
    total = sum(weights)
    sequence = picks("weighted_round_robin", servers, 2 * total)
    for length in range(1, total + 1):
        for start in range(0, total):
            window = Counter(sequence[start : start + length])
            for server in servers:
                fair = length * server.weight / total
                assert abs(window[server.id] - fair) < 2, (server, start, length)


def test_a_weight_change_continues_the_sequence_instead_of_restarting_it() -> None:
    servers = pool(1, 1, 1)
    strategy = make_strategy("weighted_round_robin")
    strategy.rebuild(servers, 0.0)
    assert names(strategy, 2) == ["a", "b"]
    servers[0].weight = 2
    strategy.rebuild(servers, 0.0)
    # A restart would begin with a, now the heaviest; c is still owed its turn.
    assert names(strategy, 1) == ["c"]
    later = Counter(names(strategy, 400))
    assert abs(later["a"] - 200) <= 2
    assert abs(later["b"] - 100) <= 2 and abs(later["c"] - 100) <= 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=6),
    st.lists(st.integers(min_value=1, max_value=8), min_size=6, max_size=6),
    st.integers(min_value=0, max_value=40),
)
def test_after_any_weight_change_shares_follow_the_new_weights(
    before: list[int], after: list[int], picks_before: int
) -> None:
    servers = pool(*before)
    strategy = make_strategy("weighted_round_robin")
    strategy.rebuild(servers, 0.0)
    names(strategy, picks_before)
    for server, weight in zip(servers, after, strict=False):
        server.weight = weight
    strategy.rebuild(servers, 0.0)
    total = sum(server.weight for server in servers)
    counts = Counter(names(strategy, 20 * total))
    for server in servers:
        assert abs(counts[server.id] - 20 * server.weight) <= 2


def test_an_unchanged_rebuild_keeps_the_exact_cycle() -> None:
    servers = pool(5, 3, 1)
    strategy = make_strategy("weighted_round_robin")
    strategy.rebuild(servers, 0.0)
    first = names(strategy, 4)
    strategy.rebuild(list(servers), 0.0)  # e.g. a refresh for an unrelated server
    assert first + names(strategy, 5) == picks("weighted_round_robin", pool(5, 3, 1), 9)


def test_a_server_leaving_and_returning_mid_cycle_keeps_the_shares() -> None:
    servers = pool(3, 2, 1)
    strategy = make_strategy("weighted_round_robin")
    strategy.rebuild(servers, 0.0)
    names(strategy, 4)
    strategy.rebuild(servers[:2], 0.0)
    assert "c" not in names(strategy, 10)
    strategy.rebuild(servers, 0.0)
    counts = Counter(names(strategy, 600))
    assert abs(counts["a"] - 300) <= 2 and abs(counts["b"] - 200) <= 2
    assert abs(counts["c"] - 100) <= 2


def test_weighted_round_robin_with_no_server_picks_none() -> None:
    assert make_strategy("weighted_round_robin").pick(None, 0.0) is None


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=6),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=1, max_value=8),
)
def test_cycles_become_exact_again_after_servers_and_weights_change(
    weights: list[int], picks_before: int, picks_between: int, new_weight: int
) -> None:
    servers = pool(*weights)
    strategy = make_strategy("weighted_round_robin")
    strategy.rebuild(servers, 0.0)
    names(strategy, picks_before)
    strategy.rebuild(servers[1:], 0.0)
    names(strategy, picks_between)
    servers[0].weight = new_weight
    strategy.rebuild(servers, 0.0)
    total = sum(server.weight for server in servers)
    settled = names(strategy, 6 * total)[2 * total :]
    expected = {server.id: server.weight for server in servers}
    for start in range(len(settled) - total + 1):
        assert Counter(settled[start : start + total]) == expected
