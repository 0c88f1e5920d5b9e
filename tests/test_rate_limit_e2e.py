"""Rate limits through a real maitred process, real backends and real sockets (memory store)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.support.backends import (
    BackendProcess,
    Response,
    build_request,
    connect,
    read_response,
)
from tests.support.balancer import BalancerFactory, BalancerProcess


def config(
    backends: list[BackendProcess],
    rate_limit: str,
    *,
    routes: str = "",
    listener_extra: str = "",
    pool: str | None = "web",
) -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    default_pool = f"    pool: {pool}\n" if pool else ""
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
{default_pool}    rate_limit: {rate_limit}
{listener_extra}{routes}
pools:
  web:
    servers:
{servers}
"""


def get(
    lb: BalancerProcess,
    path: str = "/",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> Response:
    """One request on a fresh connection from ``source`` (any 127/8 address is loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", lb.port))
        sock.sendall(build_request("GET", path, {**(headers or {}), "Connection": "close"}))
        return read_response(sock)


def statuses(
    lb: BalancerProcess,
    count: int,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> list[int]:
    return [get(lb, headers=headers, source=source).status for _ in range(count)]


def test_the_limit_admits_burst_then_answers_429_with_retry_after_and_ratelimit_headers(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{rate: 5, per: 1m}"))
    answers = [get(lb) for _ in range(6)]
    assert [a.status for a in answers] == [200] * 5 + [429]
    for left, answer in zip(range(4, -1, -1), answers, strict=False):
        assert answer.header("RateLimit-Policy") == '"listener";q=5;w=60'
        assert answer.header("RateLimit") == f'"listener";r={left};t={12 * (5 - left)}'
        assert answer.header("X-Backend") is not None  # proxied, headers added to its answer
    refused = answers[5]
    assert refused.header("Retry-After") == "12"  # one request every 12 s
    assert refused.header("RateLimit-Policy") == '"listener";q=5;w=60'
    assert refused.header("RateLimit") == '"listener";r=0;t=60'
    assert refused.header("X-Backend") is None  # never reached a server
    assert b"rate limited" in refused.body


def test_each_client_address_has_its_own_limit(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{rate: 3, per: 1m}"))
    assert statuses(lb, 4, source="127.0.0.2") == [200, 200, 200, 429]
    assert statuses(lb, 4, source="127.0.0.3") == [200, 200, 200, 429]
    assert statuses(lb, 1, source="127.0.0.2") == [429]


def test_a_header_key_limits_per_value_and_falls_back_to_the_address(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{key: header:X-Api-Key, rate: 2, per: 1m}"))
    alice = {"X-Api-Key": "alice"}
    # The same key from two addresses shares one limit.
    assert [get(lb, headers=alice, source=s).status for s in ("127.0.0.2", "127.0.0.3")] == [
        200,
        200,
    ]
    assert get(lb, headers=alice, source="127.0.0.4").status == 429
    assert statuses(lb, 3, headers={"x-api-key": "bob"}) == [200, 200, 429]
    # Without the header: limited by address, apart from any header value.
    assert statuses(lb, 3, source="127.0.0.5") == [200, 200, 429]
    assert get(lb, headers={"X-Api-Key": "127.0.0.5"}, source="127.0.0.5").status == 200


def test_pipelined_requests_are_keyed_by_their_own_headers(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{key: header:X-Api-Key, rate: 1, per: 1m}"))
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(
            b"".join(build_request("GET", "/", {"X-Api-Key": key}) for key in ("a", "b", "c", "a"))
        )
        assert [read_response(sock).status for _ in range(4)] == [200, 200, 200, 429]


def test_the_quota_refills_at_the_configured_rate(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{rate: 2, per: 1s, burst: 2}"))  # one every 500 ms
    assert statuses(lb, 3) == [200, 200, 429]
    # Time passing is what is under test here: wait one emission interval.
    time.sleep(0.55)
    assert statuses(lb, 2) == [200, 429]


def test_a_route_limit_applies_on_top_and_the_strictest_wins(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    routes = """    routes:
      - match: {path_prefix: /slow/}
        pool: web
        rate_limit: {rate: 2, per: 1m}
"""
    lb = balancer(config(backends, "{rate: 4, per: 1m}", routes=routes))
    slow = [get(lb, "/slow/x") for _ in range(3)]
    assert [a.status for a in slow] == [200, 200, 429]
    # The route's limit is closest to exhaustion: it is the one described.
    assert slow[1].header("RateLimit") == '"route";r=0;t=60'
    assert slow[1].header("RateLimit-Policy") == '"listener";q=4;w=60, "route";q=2;w=60'
    assert slow[2].header("RateLimit") == '"route";r=0;t=60'
    # The refused request did not count against the listener's limit: 2 of 4 used.
    other = [get(lb, "/") for _ in range(3)]
    assert [a.status for a in other] == [200, 200, 429]
    assert other[0].header("RateLimit") == '"listener";r=1;t=45'
    assert other[2].header("RateLimit") == '"listener";r=0;t=60'


def test_headers_false_keeps_only_retry_after(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{rate: 1, per: 1m, headers: false}"))
    admitted, refused = get(lb), get(lb)
    assert (admitted.status, refused.status) == (200, 429)
    for answer in (admitted, refused):
        assert answer.header("RateLimit") is None
        assert answer.header("RateLimit-Policy") is None
    assert refused.header("Retry-After") == "60"


def test_x_forwarded_for_counts_only_from_trusted_proxies(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(
        config(
            backends,
            "{rate: 1, per: 1m}",
            listener_extra="    trusted_proxies: [127.0.0.2/32]\n",
        )
    )
    # Through the trusted proxy, each forwarded client has its own limit.
    for client in ("198.51.100.1", "198.51.100.2"):
        forwarded = {"X-Forwarded-For": f"6.6.6.6, {client}"}
        assert get(lb, headers=forwarded, source="127.0.0.2").status == 200
        assert get(lb, headers=forwarded, source="127.0.0.2").status == 429
    # An untrusted peer is limited on its own address, whatever it forwards.
    assert get(lb, headers={"X-Forwarded-For": "198.51.100.3"}, source="127.0.0.3").status == 200
    assert get(lb, headers={"X-Forwarded-For": "198.51.100.4"}, source="127.0.0.3").status == 429


def test_a_reload_keeps_the_counts_unless_the_limit_changes(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{rate: 2, per: 1m}"))
    assert statuses(lb, 3) == [200, 200, 429]
    lb.reload(config(backends, "{rate: 2, per: 1m}"))
    assert statuses(lb, 1) == [429]
    lb.reload(config(backends, "{rate: 3, per: 1m}"))
    assert statuses(lb, 4) == [200, 200, 200, 429]


def test_the_key_cap_forgets_the_least_recently_used_client(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(config(backends, "{key: header:X-Key, rate: 1, per: 1m, max_keys: 2}"))
    for key in ("a", "b"):
        assert get(lb, headers={"X-Key": key}).status == 200
    assert get(lb, headers={"X-Key": "a"}).status == 429  # a is now the most recent
    assert get(lb, headers={"X-Key": "c"}).status == 200  # evicts b
    assert get(lb, headers={"X-Key": "a"}).status == 429  # still remembered
    assert get(lb, headers={"X-Key": "b"}).status == 200  # forgotten: a fresh burst


def rss_kib(lb: BalancerProcess) -> int:
    for line in Path(f"/proc/{lb.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood_distinct_keys(lb: BalancerProcess, first: int, count: int) -> None:
    """``count`` requests with distinct 60-byte keys, pipelined on one connection."""
    pad = "k" * 52
    batch = 2000
    with connect("127.0.0.1", lb.port) as sock:
        for start in range(first, first + count, batch):
            requests = [
                build_request("GET", "/nowhere", {"X-Key": f"{pad}{i:08d}"})
                for i in range(start, start + batch)
            ]
            sock.sendall(b"".join(requests))
            for _ in range(batch):
                # No route matches and there is no default pool: 404 after the limit.
                assert read_response(sock).status == 404


@pytest.mark.parametrize("max_keys", [1000, 1_000_000])
def test_many_distinct_keys_do_not_grow_memory_past_the_cap(
    backends: list[BackendProcess], balancer: BalancerFactory, max_keys: int
) -> None:
    routes = """    routes:
      - {match: {path_prefix: /only-this/}, pool: web}
"""
    lb = balancer(
        config(
            backends,
            f"{{key: header:X-Key, rate: 1, per: 1h, max_keys: {max_keys}}}",
            routes=routes,
            pool=None,
        )
    )
    flood_distinct_keys(lb, 0, 2000)  # warm up allocator and buffers
    before = rss_kib(lb)
    flood_distinct_keys(lb, 2000, 60_000)
    grown = rss_kib(lb) - before
    if max_keys == 1000:
        assert grown < 3 * 1024, f"RSS grew {grown} KiB with the cap"
    else:
        # The control: without a binding cap the same flood is clearly visible.
        assert grown > 8 * 1024, f"RSS grew only {grown} KiB without a cap"
