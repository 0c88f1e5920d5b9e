"""The Balancer facade: names, eligibility and backups, exclude, hash keys, slow start,
runtime changes. Strategy details live in tests/test_balancing_*.py."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import overload

import pytest

from maitred.balancing import ALGORITHMS, STRATEGIES, Balancer, LiveServer, make_strategy
from maitred.balancing.hash_key import cookie_value

CONTRACT_NAMES = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "weighted_least_connections",
    "ip_hash",
    "consistent_hash",
    "least_response_time",
    "power_of_two",
    "random",
)
NO_HEADERS: Sequence[tuple[bytes, bytes]] = ()


def server(name: str, weight: int = 1, backup: bool = False) -> LiveServer:
    return LiveServer(name, "127.0.0.1", 9000 + sum(map(ord, name)), weight=weight, backup=backup)


def serve(balancer: Balancer, count: int, now: float = 0.0) -> Counter[str]:
    """``count`` sequential requests from varied clients, as the data plane runs them."""
    chosen: Counter[str] = Counter()
    for index in range(count):
        picked = balancer.pick(f"203.0.113.{index % 250}", NO_HEADERS, now)
        assert picked is not None
        picked.active += 1
        chosen[picked.id] += 1
        picked.active -= 1
        balancer.observe(picked, 0.01, now)
    return chosen


# --- names ------------------------------------------------------------------


def test_every_contract_algorithm_name_is_available() -> None:
    assert set(ALGORITHMS) == set(CONTRACT_NAMES)
    for name in CONTRACT_NAMES:
        assert STRATEGIES[name].name == name
        assert make_strategy(name).name == name


def test_unknown_algorithm_and_bad_hash_on_are_refused() -> None:
    with pytest.raises(ValueError, match="least_connections"):
        Balancer("fastest", [server("a")])
    with pytest.raises(ValueError, match="hash_on"):
        Balancer("consistent_hash", [server("a")], hash_on="query:id")


# --- eligibility ------------------------------------------------------------


@pytest.mark.parametrize("algorithm", CONTRACT_NAMES)
def test_no_server_or_none_available_picks_none(algorithm: str) -> None:
    assert Balancer(algorithm, []).pick("192.0.2.1", NO_HEADERS, 0.0) is None
    down = server("a")
    down.available = False
    assert Balancer(algorithm, [down]).pick("192.0.2.1", NO_HEADERS, 0.0) is None


@pytest.mark.parametrize("algorithm", CONTRACT_NAMES)
def test_backups_take_over_only_while_no_primary_is_available(algorithm: str) -> None:
    first, second, spare = server("p1"), server("p2"), server("b1", backup=True)
    balancer = Balancer(algorithm, [first, second, spare], rng=random.Random(1))
    assert set(serve(balancer, 60)) == {"p1", "p2"}
    assert not balancer.on_backups

    first.available = second.available = False
    balancer.refresh(1.0)
    assert set(serve(balancer, 30, 1.0)) == {"b1"}
    assert balancer.on_backups

    second.available = True
    balancer.refresh(2.0)
    assert set(serve(balancer, 30, 2.0)) == {"p2"}, "traffic goes back to the primary"


@pytest.mark.parametrize("algorithm", CONTRACT_NAMES)
def test_an_unavailable_server_gets_nothing_after_refresh(algorithm: str) -> None:
    servers = [server("a"), server("b"), server("c")]
    balancer = Balancer(algorithm, servers, rng=random.Random(2))
    servers[1].available = False
    balancer.refresh(1.0)
    assert "b" not in serve(balancer, 100, 1.0)


@pytest.mark.parametrize("algorithm", CONTRACT_NAMES)
def test_exclude_skips_servers_and_gives_none_when_all_are_excluded(algorithm: str) -> None:
    servers = [server("a"), server("b"), server("c")]
    balancer = Balancer(algorithm, servers, rng=random.Random(3))
    for index in range(40):
        client = f"198.51.100.{index}"
        failed = balancer.pick(client, NO_HEADERS, 0.0)
        assert failed is not None
        retry = balancer.pick(client, NO_HEADERS, 0.0, exclude=(failed,))
        assert retry is not None and retry is not failed
        last = balancer.pick(client, NO_HEADERS, 0.0, exclude={failed, retry})
        assert last is not None and last not in (failed, retry)
    assert balancer.pick("198.51.100.1", NO_HEADERS, 0.0, exclude=servers) is None


def test_exclude_does_not_fall_back_to_backups() -> None:
    primary, spare = server("p"), server("b", backup=True)
    balancer = Balancer("round_robin", [primary, spare])
    assert balancer.pick("192.0.2.1", NO_HEADERS, 0.0, exclude=(primary,)) is None


# --- runtime changes --------------------------------------------------------


def test_set_servers_adds_and_removes_members_and_keeps_the_rotation() -> None:
    a, b, c, d = server("a"), server("b"), server("c"), server("d")
    balancer = Balancer("round_robin", [a, b, c])
    assert [balancer.pick("", NO_HEADERS, 0.0) for _ in range(2)] == [a, b]
    balancer.set_servers([a, b, c, d], 1.0)
    assert [balancer.pick("", NO_HEADERS, 1.0) for _ in range(3)] == [c, d, a]
    balancer.set_servers([b, d], 2.0)
    assert set(serve(balancer, 10, 2.0)) == {"b", "d"}
    assert balancer.servers == (b, d)


def test_load_tracking_follows_membership() -> None:
    a, b, c = server("a"), server("b"), server("c")
    balancer = Balancer("least_connections", [a, b])
    a.active = 4
    assert balancer.pick("", NO_HEADERS, 0.0) is b
    balancer.set_servers([b, c], 1.0)
    assert a.active_watcher is None and c.active_watcher is not None
    a.active -= 4  # a draining request finishing after removal must not disturb the pool
    b.active = 2
    assert balancer.pick("", NO_HEADERS, 1.0) is c
    c.active = 3
    assert balancer.pick("", NO_HEADERS, 1.0) is b


def test_a_draining_server_finishing_requests_does_not_break_picks() -> None:
    a, b = server("a"), server("b")
    balancer = Balancer("weighted_least_connections", [a, b])
    picked = balancer.pick("", NO_HEADERS, 0.0)
    assert picked is not None
    picked.active += 1
    picked.available = False
    balancer.refresh(1.0)
    picked.active -= 1
    assert set(serve(balancer, 5, 1.0)) == {"b" if picked is a else "a"}


@pytest.mark.parametrize(
    "algorithm", ["weighted_round_robin", "weighted_least_connections", "random", "power_of_two"]
)
def test_a_weight_changed_at_runtime_applies_after_refresh(algorithm: str) -> None:
    a, b = server("a"), server("b")
    balancer = Balancer(algorithm, [a, b], rng=random.Random(4))
    serve(balancer, 11)
    b.weight = 3
    balancer.refresh(1.0)
    counts = serve(balancer, 4_000, 1.0)
    assert counts["b"] / 4_000 == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("algorithm", CONTRACT_NAMES)
def test_observe_keeps_the_latency_estimate_for_every_algorithm(algorithm: str) -> None:
    a = server("a")
    balancer = Balancer(algorithm, [a])
    balancer.observe(a, 0.2, 5.0)
    assert (a.ewma, a.ewma_stamp) == (0.2, 5.0)


# --- hash keys --------------------------------------------------------------


class Untouchable(Sequence[tuple[bytes, bytes]]):
    """Headers that fail the test if anyone reads them."""

    def __len__(self) -> int:
        raise AssertionError("headers read by a strategy that hashes nothing")

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[bytes, bytes]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[bytes, bytes] | Sequence[tuple[bytes, bytes]]:
        raise AssertionError("headers read by a strategy that hashes nothing")

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        raise AssertionError("headers read by a strategy that hashes nothing")


def test_the_key_is_only_derived_for_hashing_strategies() -> None:
    balancer = Balancer("round_robin", [server("a")], hash_on="header:X-User")
    assert balancer.pick("192.0.2.1", Untouchable(), 0.0) is not None


def hashing_pool() -> list[LiveServer]:
    return [server(f"s{index}") for index in range(8)]


def test_hash_on_a_header_ignores_the_client_address_and_header_name_case() -> None:
    balancer = Balancer("consistent_hash", hashing_pool(), hash_on="header:X-User")
    placed = {
        balancer.pick(f"192.0.2.{index}", [(name, b"alice")], 0.0)
        for index, name in enumerate([b"X-User", b"x-user", b"X-USER"] * 10)
    }
    assert placed == {balancer.strategy.pick("alice", 0.0)}
    users = {balancer.pick("192.0.2.1", [(b"X-User", f"u{i}".encode())], 0.0) for i in range(200)}
    assert len(users) == 8, "different header values spread over the pool"


def test_hash_on_a_missing_or_empty_header_falls_back_to_the_client_address() -> None:
    by_header = Balancer("consistent_hash", hashing_pool(), hash_on="header:X-User")
    by_address = Balancer("consistent_hash", by_header.servers)
    for index in range(50):
        client = f"198.51.100.{index}"
        expected = by_address.pick(client, NO_HEADERS, 0.0)
        assert by_header.pick(client, [(b"Host", b"example.com")], 0.0) is expected
        assert by_header.pick(client, [(b"X-User", b"")], 0.0) is expected


def test_hash_on_a_cookie_reads_it_from_any_cookie_header() -> None:
    balancer = Balancer("ip_hash", hashing_pool(), hash_on="cookie:SESSION")
    expected = balancer.strategy.pick("abc123", 0.0)
    cases: list[list[tuple[bytes, bytes]]] = [
        [(b"Cookie", b"SESSION=abc123")],
        [(b"cookie", b"theme=dark; SESSION=abc123; lang=en")],
        [(b"Cookie", b"theme=dark"), (b"Cookie", b'SESSION="abc123"')],
        [(b"Cookie", b"XSESSION=zzz; SESSION=abc123")],
    ]
    for index, headers in enumerate(cases):
        assert balancer.pick(f"192.0.2.{index}", headers, 0.0) is expected, headers
    fallback = Balancer("ip_hash", balancer.servers)
    assert balancer.pick("192.0.2.77", [(b"Cookie", b"theme=dark")], 0.0) is fallback.pick(
        "192.0.2.77", NO_HEADERS, 0.0
    )


def test_cookie_value_parsing() -> None:
    assert cookie_value(b"a=1; b=2", b"b") == b"2"
    assert cookie_value(b"a=1;b=2", b"a") == b"1"
    assert cookie_value(b"flag; a = 3 ", b"a") is None  # name must match exactly
    assert cookie_value(b"flag; a=3 ", b"a") == b"3"
    assert cookie_value(b"ab=1", b"a") is None
    assert cookie_value(b"", b"a") is None


# --- slow start -------------------------------------------------------------


def warming_pair(algorithm: str, slow_start: float | None = 10.0) -> tuple[Balancer, LiveServer]:
    """Server a warm since t=0, server b back at t=100 with a ``slow_start`` ramp."""
    warm, newcomer = server("a"), server("b")
    newcomer.available = False
    balancer = Balancer(
        algorithm, [warm, newcomer], slow_start=slow_start, rng=random.Random(5), now=0.0
    )
    newcomer.available = True
    newcomer.available_since = 100.0
    balancer.refresh(100.0)
    return balancer, newcomer


def newcomer_shares(algorithm: str, slow_start: float | None = 10.0) -> list[float]:
    """The newcomer's share of sequential requests in each second from t=100."""
    balancer, newcomer = warming_pair(algorithm, slow_start)
    per_second = 1_000
    shares = []
    for second in range(13):
        counts = Counter(
            balancer.pick(f"192.0.2.{index % 250}", NO_HEADERS, 100 + second + index / per_second)
            for index in range(per_second)
        )
        shares.append(counts[newcomer] / per_second)
    return shares


@pytest.mark.parametrize(
    "algorithm",
    [
        "weighted_round_robin",
        "least_connections",
        "weighted_least_connections",
        "random",
        "power_of_two",
    ],
)
def test_slow_start_ramps_a_returning_server_from_a_small_share_to_its_full_share(
    algorithm: str,
) -> None:
    shares = newcomer_shares(algorithm)
    # Effective weight 0.1 → 1 over 10 s against a warm server of weight 1:
    # share 0.1/1.1 ≈ 9 % in the first second, ≈ 31 % in the fifth, 50 % at the end.
    assert shares[0] < 0.14
    assert 0.22 < shares[4] < 0.40
    assert shares[0] < shares[3] < shares[6] < shares[9]
    assert shares[11] == pytest.approx(0.5, abs=0.05)
    assert shares[12] == pytest.approx(0.5, abs=0.05)


def test_without_slow_start_a_returning_server_gets_its_share_at_once() -> None:
    assert newcomer_shares("weighted_round_robin", slow_start=None)[0] == 0.5


def test_round_robin_and_ip_hash_do_not_ramp() -> None:
    assert newcomer_shares("round_robin")[0] == 0.5
    assert newcomer_shares("ip_hash")[0] > 0.3


def test_slow_start_ramps_through_the_load_bound_under_consistent_hash() -> None:
    balancer, newcomer = warming_pair("consistent_hash")
    for index in range(200):
        picked = balancer.pick(f"198.51.100.{index}", NO_HEADERS, 101.0)
        assert picked is not None
        picked.active += 1
    # At 10 % of its weight the newcomer may hold 1.25 × 10/110 of the load.
    assert 0 < newcomer.active <= math.ceil(1.25 * 200 * 0.1 / 1.1)
    for index in range(200, 400):
        picked = balancer.pick(f"198.51.100.{index}", NO_HEADERS, 111.0)
        assert picked is not None
        picked.active += 1
    assert newcomer.active > 100, "at full weight it takes its share of new requests"


def test_slow_start_ramps_least_connections_under_held_load() -> None:
    balancer, newcomer = warming_pair("least_connections")
    for _ in range(110):
        picked = balancer.pick("", NO_HEADERS, 101.0)
        assert picked is not None
        picked.active += 1
    assert 5 <= newcomer.active <= 12  # ≈ 0.1 / 1.1 of 110, not 55
