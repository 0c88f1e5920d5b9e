"""ip_hash and consistent_hash: stability, ~1/N remapping, weights, bounded load."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.balancing import BalancingStrategy, LiveServer, make_strategy

KEYS = [f"198.51.{index // 250}.{index % 250}" for index in range(6_000)]


def pool(size: int, weight: int = 1) -> list[LiveServer]:
    return [
        LiveServer(f"s{index}", "10.0.0.1", 9000 + index, weight=weight) for index in range(size)
    ]


def wired(name: str, servers: list[LiveServer], balance_factor: float = 0.25) -> BalancingStrategy:
    strategy = make_strategy(name, balance_factor=balance_factor)
    if strategy.tracks_active:
        for server in servers:
            server.active_watcher = strategy.on_active_change
    strategy.rebuild(servers, 0.0)
    return strategy


def placement(strategy: BalancingStrategy) -> dict[str, str]:
    """Where each key goes on an idle pool."""
    placed = {}
    for key in KEYS:
        server = strategy.pick(key, 0.0)
        assert server is not None
        placed[key] = server.id
    return placed


def test_a_key_always_lands_on_the_same_server() -> None:
    for name in ("ip_hash", "consistent_hash"):
        strategy = wired(name, pool(8))
        assert placement(strategy) == placement(strategy)
        assert placement(strategy) == placement(wired(name, pool(8)))


def test_removing_one_of_n_servers_moves_only_its_own_keys() -> None:
    for name in ("ip_hash", "consistent_hash"):
        servers = pool(10)
        strategy = wired(name, servers)
        before = placement(strategy)
        removed = servers[3]
        strategy.rebuild([server for server in servers if server is not removed], 0.0)
        after = placement(strategy)
        moved = {key for key in KEYS if before[key] != after[key]}
        assert moved == {key for key in KEYS if before[key] == removed.id}
        assert 0.5 / 10 < len(moved) / len(KEYS) < 1.6 / 10
        strategy.rebuild(servers, 0.0)
        assert placement(strategy) == before, "the keys come back when the server does"


def test_adding_a_server_takes_about_one_share_and_only_for_itself() -> None:
    servers = pool(11)
    strategy = wired("ip_hash", servers[:10])
    before = placement(strategy)
    strategy.rebuild(servers, 0.0)
    after = placement(strategy)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "s10" for key in moved)
    # hash % N would move about 10/11 of the keys.
    assert 0.5 / 11 < len(moved) / len(KEYS) < 1.6 / 11


def test_every_server_gets_a_fair_share_of_keys() -> None:
    counts = Counter(placement(wired("ip_hash", pool(6))).values())
    assert set(counts) == {f"s{index}" for index in range(6)}
    for count in counts.values():
        assert 0.7 < count / (len(KEYS) / 6) < 1.3


def test_weights_give_proportionally_more_keys() -> None:
    servers = pool(4)
    servers[0].weight = 3
    counts = Counter(placement(wired("ip_hash", servers)).values())
    assert 0.45 < counts["s0"] / len(KEYS) < 0.55  # 3 / 6 of the keys


def test_a_weight_change_moves_keys_only_to_or_from_that_server() -> None:
    servers = pool(6)
    strategy = wired("consistent_hash", servers)
    before = placement(strategy)
    servers[2].weight = 2
    strategy.rebuild(servers, 0.0)
    after = placement(strategy)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved and all(after[key] == "s2" for key in moved)


def test_placement_is_the_same_in_every_process() -> None:
    # Workers are separate processes with different hash() seeds; they must agree.
    script = (
        "import json, sys\n"
        "from maitred.balancing import LiveServer, make_strategy\n"
        "servers = [LiveServer(f's{i}', '10.0.0.1', 9000 + i) for i in range(8)]\n"
        "strategy = make_strategy('consistent_hash')\n"
        "strategy.rebuild(servers, 0.0)\n"
        "keys = [f'client-{i}' for i in range(300)]\n"
        "print(json.dumps([strategy.pick(key, 0.0).id for key in keys]))\n"
    )
    results = []
    for seed in ("1", "2"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        completed = subprocess.run(
            [sys.executable, "-c", script],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        results.append(json.loads(completed.stdout))
    assert results[0] == results[1]
    assert len(set(results[0])) == 8


def test_a_hot_key_spills_over_under_bounded_load_but_not_under_ip_hash() -> None:
    servers = pool(4)
    bounded = wired("consistent_hash", servers)
    for _ in range(100):
        server = bounded.pick("the-hot-key", 0.0)
        assert server is not None
        server.active += 1
    assert max(server.active for server in servers) <= math.ceil(1.25 * 100 / 4)
    assert sum(server.active for server in servers) == 100

    strict = pool(4)
    affinity = wired("ip_hash", strict)
    assert len({affinity.pick("the-hot-key", 0.0) for _ in range(100)}) == 1


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=8),
    balance_factor=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    operations=st.lists(st.integers(min_value=0, max_value=2**16), min_size=1, max_size=200),
)
def test_no_server_ever_exceeds_the_load_bound(
    sizes: list[int], balance_factor: float, operations: list[int]
) -> None:
    servers = [
        LiveServer(f"s{index}", "10.0.0.2", 7000 + index, weight=weight)
        for index, weight in enumerate(sizes)
    ]
    strategy = wired("consistent_hash", servers, balance_factor)
    total_weight = sum(sizes)
    hot_keys = ["a", "b", "c"]  # few keys: the worst case for balance
    for operation in operations:
        if operation % 3 and any(server.active for server in servers):
            busy = [server for server in servers if server.active]
            busy[operation % len(busy)].active -= 1
            continue
        server = strategy.pick(hot_keys[operation % 3], 0.0)
        assert server is not None
        server.active += 1
        # At placement, counting this request: active <= ceil((1 + c) × total × w / W).
        total = sum(each.active for each in servers)
        bound = math.ceil((1 + balance_factor) * total * server.weight / total_weight)
        assert server.active <= bound, (server, total)


def test_exclude_walks_on_to_the_next_server_on_the_ring() -> None:
    servers = pool(5)
    strategy = wired("consistent_hash", servers)
    owner = strategy.pick("session-42", 0.0)
    assert owner is not None
    retry = strategy.pick_excluding("session-42", 0.0, {owner})
    assert retry is not None and retry is not owner
    # The retry target is where the key would go without the owner.
    strategy.rebuild([server for server in servers if server is not owner], 0.0)
    assert strategy.pick("session-42", 0.0) is retry
    assert strategy.pick_excluding("session-42", 0.0, set(servers)) is None


def test_hashing_a_big_pool_stays_even_and_complete() -> None:
    servers = pool(1_000)
    strategy = wired("consistent_hash", servers)
    rng = random.Random(3)
    counts = Counter(strategy.pick(str(rng.random()), 0.0) for _ in range(20_000))
    assert len(counts) > 950
    assert strategy.pick("x", 0.0) in servers


def test_no_server_picks_none() -> None:
    for name in ("ip_hash", "consistent_hash"):
        strategy = wired(name, [])
        assert strategy.pick("key", 0.0) is None
