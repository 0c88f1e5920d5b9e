"""Every algorithm name of the contract, end to end through a real balancer process."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.backends import BackendProcess, build_request, connect, read_response
from tests.support.balancer import BalancerFactory, pool_config


def weighted_pool(
    backends: list[BackendProcess], algorithm: str, weights: tuple[int, ...], extra: str = ""
) -> str:
    servers = [
        f"{{address: {b.address}, weight: {w}}}" for b, w in zip(backends, weights, strict=True)
    ]
    return pool_config(servers, algorithm, extra)


def spread(port: int, count: int, headers: dict[str, str] | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    with connect("127.0.0.1", port) as sock:
        for _ in range(count):
            sock.sendall(build_request("GET", "/", headers))
            response = read_response(sock)
            assert response.status == 200
            seen[response.header("X-Backend") or "?"] += 1
    return seen


@pytest.fixture
def slow_backend_reset(backends: list[BackendProcess]) -> Iterator[None]:
    yield
    for backend in backends:
        backend.set_slow(0)


def test_round_robin(backends: list[BackendProcess], balancer: BalancerFactory) -> None:
    lb = balancer(weighted_pool(backends, "round_robin", (1, 1, 1)))
    assert spread(lb.port, 30) == {"b1": 10, "b2": 10, "b3": 10}


def test_weighted_round_robin(backends: list[BackendProcess], balancer: BalancerFactory) -> None:
    lb = balancer(weighted_pool(backends, "weighted_round_robin", (3, 2, 1)))
    assert spread(lb.port, 60) == {"b1": 30, "b2": 20, "b3": 10}


def _hold_one_request(port: int) -> socket.socket:
    """A request that stays in flight on some server for a while."""
    sock = connect("127.0.0.1", port)
    sock.sendall(build_request("GET", "/delay?ms=3000"))
    return sock


@pytest.mark.parametrize("algorithm", ["least_connections", "weighted_least_connections"])
def test_least_connections_avoids_the_busy_server(
    backends: list[BackendProcess], balancer: BalancerFactory, algorithm: str
) -> None:
    lb = balancer(weighted_pool(backends[:2], algorithm, (1, 1)))
    with _hold_one_request(lb.port) as held:
        # Sequential requests: the server holding the slow one never gets them.
        seen = spread(lb.port, 10)
        assert len(seen) == 1
        idle_name = next(iter(seen))
        busy_name = ({"b1", "b2"} - {idle_name}).pop()
        held.settimeout(10)
        assert read_response(held).header("X-Backend") == busy_name


def test_weighted_least_connections_follows_weights(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(weighted_pool(backends, "weighted_least_connections", (5, 3, 1)))
    assert spread(lb.port, 90) == {"b1": 50, "b2": 30, "b3": 10}


@pytest.mark.parametrize("algorithm", ["ip_hash", "consistent_hash"])
def test_hashing_sticks_by_client_address(
    backends: list[BackendProcess], balancer: BalancerFactory, algorithm: str
) -> None:
    lb = balancer(weighted_pool(backends, algorithm, (1, 1, 1)))
    assert len(spread(lb.port, 12)) == 1


@pytest.mark.parametrize("algorithm", ["ip_hash", "consistent_hash"])
def test_hashing_on_a_header_sticks_per_key_and_spreads_keys(
    backends: list[BackendProcess], balancer: BalancerFactory, algorithm: str
) -> None:
    lb = balancer(weighted_pool(backends, algorithm, (1, 1, 1), "    hash_on: header:X-User\n"))
    owners = {}
    for user in range(30):
        seen = spread(lb.port, 3, {"X-User": f"user-{user}"})
        assert len(seen) == 1, seen
        owners[user] = next(iter(seen))
    assert set(owners.values()) == {"b1", "b2", "b3"}


def test_least_response_time_prefers_the_fast_servers(
    backends: list[BackendProcess], balancer: BalancerFactory, slow_backend_reset: None
) -> None:
    backends[0].set_slow(150)
    lb = balancer(weighted_pool(backends, "least_response_time", (1, 1, 1)))
    seen = spread(lb.port, 40)
    assert seen["b1"] <= 3, seen
    assert seen["b2"] + seen["b3"] >= 37


@pytest.mark.parametrize("algorithm", ["power_of_two", "random"])
def test_randomised_algorithms_use_every_server(
    backends: list[BackendProcess], balancer: BalancerFactory, algorithm: str
) -> None:
    lb = balancer(weighted_pool(backends, algorithm, (1, 1, 1)))
    seen = spread(lb.port, 300)
    assert set(seen) == {"b1", "b2", "b3"}
    assert min(seen.values()) >= 50, seen


def test_backup_takes_traffic_only_without_primaries(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    b1, b2, _ = backends
    config = f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    servers:
      - {{address: {b1.address}}}
      - {{address: {b2.address}, backup: true}}
"""
    lb = balancer(config)
    assert spread(lb.port, 6) == {"b1": 6}
