"""The sticky affinities against real Balancers, driven through a minimal exchange.

The data plane calls ``choose`` before balancing and ``chosen`` once a server
takes the request (again on a retry); these tests play that part, with the
wall clock injected, so expiry and refresh need no waiting.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from maitred.balancing import Balancer, LiveServer
from maitred.config import Sticky
from maitred.policies.sticky import build_affinity
from maitred.policies.sticky_by_cookie import CookieAffinity
from maitred.policies.sticky_by_key import KeyAffinity, client_ip_key, header_key
from maitred.policies.sticky_cookie import StickyCookieCodec

SECRET = b"a secret of reasonable length"
T0 = 1_700_000_000.0


@dataclass
class FakeClient:
    headers: list[tuple[bytes, bytes]]
    client_ip: str = "192.0.2.10"
    scheme: bytes = b"http"
    errors: list[int] = field(default_factory=list)

    @property
    def slot(self) -> Any:
        return SimpleNamespace(runtime=SimpleNamespace(scheme=self.scheme))

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        return list(self.headers)

    def answer_error(self, exchange: FakeExchange, status: int, why: str) -> None:
        exchange.finished = True
        self.errors.append(status)


@dataclass
class FakeExchange:
    pool: Any
    client: FakeClient
    response_headers: bytes = b""
    finished: bool = False


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def servers(count: int, **options: Any) -> list[LiveServer]:
    return [
        LiveServer(f"web-10.0.0.{i}-80", f"10.0.0.{i}", 80, **options) for i in range(1, count + 1)
    ]


def pool_of(members: list[LiveServer], algorithm: str = "round_robin") -> Any:
    return SimpleNamespace(name="web", balancer=Balancer(algorithm, members))


def settings(**overrides: Any) -> Sticky:
    return Sticky(mode="cookie", **overrides)


def request(
    affinity: Any, pool: Any, headers: list[tuple[bytes, bytes]] | None = None, **client: Any
) -> tuple[FakeExchange, LiveServer | None]:
    """Play the data plane: choose, else balance, then chosen."""
    exchange = FakeExchange(pool, FakeClient(headers or [], **client))
    server = affinity.choose(exchange, 0.0)
    if exchange.finished:
        return exchange, None
    if server is None:
        server = pool.balancer.pick(exchange.client.client_ip, (), 0.0)
    assert server is not None
    affinity.chosen(exchange, server, 0.0)
    return exchange, server


def set_cookie_lines(exchange: FakeExchange) -> list[bytes]:
    return [
        line
        for line in exchange.response_headers.split(b"\r\n")
        if line.startswith(b"Set-Cookie: ")
    ]


def cookie_of(exchange: FakeExchange, name: bytes = b"LB_SESSION") -> tuple[bytes, bytes]:
    (line,) = set_cookie_lines(exchange)
    pair = line.removeprefix(b"Set-Cookie: ").split(b";")[0]
    assert pair.startswith(name + b"=")
    return (b"Cookie", pair)


def make(clock: Clock, **overrides: Any) -> CookieAffinity:
    return CookieAffinity("web", settings(**overrides), SECRET, wall_clock=clock)


# -- cookie mode -----------------------------------------------------------------------


def test_a_new_client_gets_a_cookie_and_then_sticks_without_more_set_cookies() -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    affinity = make(clock)
    first, server = request(affinity, pool)
    (line,) = set_cookie_lines(first)
    assert line.endswith(b"; Max-Age=3600; Path=/; SameSite=Lax; HttpOnly")
    cookie = cookie_of(first)
    for _ in range(20):
        exchange, again = request(affinity, pool, [cookie])
        assert again is server
        assert exchange.response_headers == b""


def test_new_clients_are_spread_by_the_algorithm() -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    affinity = make(clock)
    chosen = Counter(request(affinity, pool)[1] for _ in range(6))
    assert sorted(chosen.values()) == [2, 2, 2]


def test_the_cookie_is_found_among_others_and_after_a_forged_one() -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    affinity = make(clock)
    first, server = request(affinity, pool)
    value = cookie_of(first)[1]
    headers = [(b"cookie", b"a=1; LB_SESSION=forged"), (b"Cookie", b"theme=dark; " + value)]
    for _ in range(4):
        exchange, again = request(affinity, pool, headers)
        assert again is server and exchange.response_headers == b""


@pytest.mark.parametrize(
    "value",
    [b"LB_SESSION=", b"LB_SESSION=garbage", b"LB_SESSION=" + b"A" * 39, b"OTHER=1"],
)
def test_a_forged_or_unknown_cookie_is_replaced(value: bytes) -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    affinity = make(clock)
    exchange, server = request(affinity, pool, [(b"Cookie", value)])
    fresh = cookie_of(exchange)
    assert fresh[1] != value
    assert request(affinity, pool, [fresh])[1] is server


def test_a_cookie_of_another_pool_or_secret_is_replaced() -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    foreign = CookieAffinity("api", settings(), SECRET, wall_clock=clock)
    other_secret = CookieAffinity("web", settings(), b"some other secret", wall_clock=clock)
    affinity = make(clock)
    for stranger in (foreign, other_secret):
        cookie = cookie_of(request(stranger, pool)[0])
        exchange, _ = request(affinity, pool, [cookie])
        assert cookie_of(exchange) != cookie


def test_two_instances_with_the_same_secret_agree() -> None:
    clock = Clock()
    one, other = make(clock), make(clock)
    pool_one, pool_other = pool_of(servers(3)), pool_of(servers(3))
    for _ in range(3):
        exchange, server = request(one, pool_one)
        assert server is not None
        _, elsewhere = request(other, pool_other, [cookie_of(exchange)])
        assert elsewhere is not None and elsewhere.address == server.address


def test_an_expired_cookie_is_replaced_and_one_past_half_life_refreshed() -> None:
    clock = Clock()
    pool = pool_of(servers(3))
    affinity = make(clock, max_age=100.0)
    first, server = request(affinity, pool)
    cookie = cookie_of(first)
    clock.now = T0 + 49
    assert request(affinity, pool, [cookie])[0].response_headers == b""
    clock.now = T0 + 51
    refreshed, again = request(affinity, pool, [cookie])
    assert again is server
    newer = cookie_of(refreshed)
    assert newer != cookie
    clock.now = T0 + 100
    expired, _ = request(affinity, pool, [cookie])
    assert set_cookie_lines(expired)  # balanced normally, fresh cookie
    assert request(affinity, pool, [newer])[1] is server  # the refreshed one still works


def test_an_unavailable_server_moves_the_session_and_rewrites_the_cookie() -> None:
    clock = Clock()
    members = servers(3)
    pool = pool_of(members)
    affinity = make(clock)
    first, server = request(affinity, pool)
    assert server is not None
    old_cookie = cookie_of(first)
    server.available = False  # unhealthy, draining or in maintenance alike
    pool.balancer.refresh(0.0)
    moved, new_server = request(affinity, pool, [old_cookie])
    assert new_server is not None and new_server is not server
    new_cookie = cookie_of(moved)
    for _ in range(5):
        exchange, again = request(affinity, pool, [new_cookie])
        assert again is new_server and exchange.response_headers == b""
    server.available = True
    pool.balancer.refresh(0.0)
    assert request(affinity, pool, [new_cookie])[1] is new_server  # no flapping back


def test_a_server_removed_from_the_pool_moves_its_sessions() -> None:
    clock = Clock()
    members = servers(3)
    pool = pool_of(members)
    affinity = make(clock)
    first, server = request(affinity, pool)
    pool.balancer.set_servers([s for s in members if s is not server], 0.0)
    moved, new_server = request(affinity, pool, [cookie_of(first)])
    assert new_server is not server
    assert set_cookie_lines(moved)


def test_a_full_server_moves_the_session() -> None:
    clock = Clock()
    members = servers(2)
    for member in members:
        member.max_connections = 1
    pool = pool_of(members)
    affinity = make(clock)
    first, server = request(affinity, pool)
    assert server is not None
    server.active = 1
    _, other = request(affinity, pool, [cookie_of(first)])
    assert other is not server


def test_sessions_on_a_backup_return_to_the_primaries() -> None:
    clock = Clock()
    primary, backup = LiveServer("p", "10.0.0.1", 80), LiveServer("b", "10.0.0.2", 80, backup=True)
    pool = pool_of([primary, backup])
    affinity = make(clock)
    primary.available = False
    pool.balancer.refresh(0.0)
    first, server = request(affinity, pool)
    assert server is backup
    primary.available = True
    pool.balancer.refresh(0.0)
    back, server = request(affinity, pool, [cookie_of(first)])
    assert server is primary and set_cookie_lines(back)


def test_strict_answers_503_instead_of_moving() -> None:
    clock = Clock()
    members = servers(3)
    pool = pool_of(members)
    affinity = make(clock, strict=True)
    first, server = request(affinity, pool)
    assert server is not None
    cookie = cookie_of(first)
    server.available = False
    pool.balancer.refresh(0.0)
    refused, none = request(affinity, pool, [cookie])
    assert none is None and refused.client.errors == [503]
    assert refused.response_headers == b""
    pool.balancer.set_servers([s for s in members if s is not server], 0.0)
    assert request(affinity, pool, [cookie])[0].client.errors == [503]  # removed: still 503
    fresh, elsewhere = request(affinity, pool)  # a client without a session is served
    assert elsewhere is not None and set_cookie_lines(fresh)


def test_strict_keeps_the_cookie_when_a_retry_lands_elsewhere() -> None:
    clock = Clock()
    members = servers(3)
    pool = pool_of(members)
    affinity = make(clock, strict=True)
    first, server = request(affinity, pool)
    exchange = FakeExchange(pool, FakeClient([cookie_of(first)]))
    assert affinity.choose(exchange, 0.0) is server
    affinity.chosen(exchange, server, 0.0)
    affinity.chosen(exchange, next(s for s in members if s is not server), 0.0)  # the retry
    assert exchange.response_headers == b""


def test_a_retry_replaces_the_cookie_set_for_the_failed_attempt() -> None:
    clock = Clock()
    members = servers(3)
    pool = pool_of(members)
    affinity = make(clock)
    exchange = FakeExchange(pool, FakeClient([], client_ip="192.0.2.1"))
    exchange.response_headers = b"X-Other: kept\r\n"
    assert affinity.choose(exchange, 0.0) is None
    affinity.chosen(exchange, members[0], 0.0)
    request(affinity, pool)  # another exchange in between: the retry must decode again
    affinity.chosen(exchange, members[1], 0.0)
    assert exchange.response_headers.startswith(b"X-Other: kept\r\n")
    assert request(affinity, pool, [cookie_of(exchange)])[1] is members[1]


def test_cookie_attributes_follow_the_settings_and_the_listener() -> None:
    clock = Clock()
    pool = pool_of(servers(1))
    plain = make(clock)
    https = request(plain, pool, scheme=b"https")[0]
    assert set_cookie_lines(https)[0].endswith(b"; SameSite=Lax; HttpOnly; Secure")
    custom = make(
        clock,
        cookie="SRV",
        max_age=90.5,
        path="/app",
        domain="example.com",
        same_site="Strict",
        secure=True,
        http_only=False,
    )
    (line,) = set_cookie_lines(request(custom, pool)[0])
    attributes = line.split(b"; ")[1:]
    assert line.startswith(b"Set-Cookie: SRV=")
    assert attributes == [
        b"Max-Age=91",
        b"Path=/app",
        b"Domain=example.com",
        b"SameSite=Strict",
        b"Secure",
    ]
    never_secure = make(clock, secure=False)
    assert b"Secure" not in request(never_secure, pool, scheme=b"https")[0].response_headers
    cross_site = make(clock, same_site="None")
    assert set_cookie_lines(request(cross_site, pool)[0])[0].endswith(
        b"SameSite=None; HttpOnly; Secure"
    )


def test_the_cookie_does_not_name_the_server() -> None:
    clock = Clock()
    pool = pool_of(servers(1))
    line = set_cookie_lines(request(make(clock), pool)[0])[0]
    assert b"10.0.0.1" not in line and b"web-" not in line


@pytest.mark.parametrize(
    "algorithm",
    [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "weighted_least_connections",
        "ip_hash",
        "consistent_hash",
        "least_response_time",
        "power_of_two",
        "random",
    ],
)
def test_stickiness_composes_with_every_algorithm(algorithm: str) -> None:
    clock = Clock()
    pool = pool_of(servers(4), algorithm)
    affinity = make(clock)
    first, server = request(affinity, pool, client_ip="192.0.2.7")
    cookie = cookie_of(first)
    for index in range(20):
        # Other load and other clients would sway the algorithm, not the session.
        request(affinity, pool, client_ip=f"198.51.100.{index}")
        assert request(affinity, pool, [cookie], client_ip=f"203.0.113.{index}")[1] is server


def test_build_affinity_uses_the_pool_secret_over_the_process_one() -> None:
    from maitred.config.loader import parse_config_text

    config = parse_config_text(
        """
listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
pools:
  web:
    servers: [{address: 10.0.0.1:80}]
    sticky: {mode: cookie, secret: the-pools-own-secret}
  ip: {servers: [{address: 10.0.0.1:80}], sticky: {mode: ip}}
  hdr: {servers: [{address: 10.0.0.1:80}], sticky: {mode: 'header:X-User'}}
  none: {servers: [{address: 10.0.0.1:80}]}
"""
    )
    web = build_affinity("web", config.pools["web"], secret=SECRET, https=False)
    pool = pool_of(servers(1))
    line = set_cookie_lines(request(web, pool)[0])[0]
    value = line.split(b"=", 1)[1].split(b";")[0]
    assert StickyCookieCodec(b"the-pools-own-secret", "web").decode(value, T0 + 1) is not None
    assert isinstance(
        build_affinity("ip", config.pools["ip"], secret=b"", https=False), KeyAffinity
    )
    assert isinstance(
        build_affinity("hdr", config.pools["hdr"], secret=b"", https=False), KeyAffinity
    )
    assert build_affinity("none", config.pools["none"], secret=b"", https=False) is None


# -- ip and header modes -------------------------------------------------------------

KEYS = [f"198.51.{i // 250}.{i % 250}" for i in range(3000)]


def placement(affinity: KeyAffinity, pool: Any) -> dict[str, str]:
    placed = {}
    for key in KEYS:
        exchange = FakeExchange(pool, FakeClient([], client_ip=key))
        server = affinity.choose(exchange, 0.0)
        assert server is not None
        placed[key] = server.id
    return placed


def test_ip_mode_sticks_and_spreads_evenly() -> None:
    pool = pool_of(servers(4))
    affinity = KeyAffinity("web", client_ip_key, strict=False)
    placed = placement(affinity, pool)
    assert placed == placement(affinity, pool)
    assert placed == placement(KeyAffinity("web", client_ip_key, strict=False), pool_of(servers(4)))
    shares = Counter(placed.values())
    assert len(shares) == 4 and min(shares.values()) > len(KEYS) / 4 * 0.6


def test_adding_a_server_moves_clients_only_to_it() -> None:
    members = servers(5)
    pool = pool_of(members[:4])
    affinity = KeyAffinity("web", client_ip_key, strict=False)
    before = placement(affinity, pool)
    pool.balancer.set_servers(members, 0.0)
    after = placement(affinity, pool)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == members[4].id for key in moved)
    assert 0.1 < len(moved) / len(KEYS) < 0.3  # about 1/5


def test_an_unavailable_server_loses_only_its_own_clients_and_gets_them_back() -> None:
    members = servers(4)
    pool = pool_of(members)
    affinity = KeyAffinity("web", client_ip_key, strict=False)
    before = placement(affinity, pool)
    members[1].available = False
    pool.balancer.refresh(0.0)
    during = placement(affinity, pool)
    for key in KEYS:
        if before[key] == members[1].id:
            assert during[key] != members[1].id
        else:
            assert during[key] == before[key]
    members[1].available = True
    pool.balancer.refresh(0.0)
    assert placement(affinity, pool) == before


def test_key_mode_strict_answers_503_when_the_home_server_is_away() -> None:
    members = servers(3)
    pool = pool_of(members)
    affinity = KeyAffinity("web", client_ip_key, strict=True)
    home = affinity.choose(FakeExchange(pool, FakeClient([])), 0.0)
    assert home is not None
    home.available = False
    pool.balancer.refresh(0.0)
    exchange = FakeExchange(pool, FakeClient([]))
    assert affinity.choose(exchange, 0.0) is None
    assert exchange.finished and exchange.client.errors == [503]


def test_header_mode_keys_by_the_header_and_falls_back_without_it() -> None:
    pool = pool_of(servers(3))
    affinity = KeyAffinity("web", header_key("x-user"), strict=False)
    seen = Counter()
    for user in range(60):
        headers = [(b"X-User", f"user-{user}".encode())]
        first = affinity.choose(FakeExchange(pool, FakeClient(headers)), 0.0)
        again = affinity.choose(FakeExchange(pool, FakeClient(headers, client_ip="10.9.9.9")), 0.0)
        assert first is not None and first is again
        seen[first] += 1
    assert len(seen) == 3
    for headers in ([], [(b"X-User", b"")], [(b"X-Other", b"user-1")]):
        assert affinity.choose(FakeExchange(pool, FakeClient(headers)), 0.0) is None


def test_key_mode_uses_backups_only_while_no_primary_is_available() -> None:
    primaries = servers(2)
    backups = [LiveServer(f"b{i}", f"10.1.0.{i}", 80, backup=True) for i in range(2)]
    pool = pool_of(primaries + backups)
    affinity = KeyAffinity("web", client_ip_key, strict=False)
    assert set(placement(affinity, pool).values()) == {s.id for s in primaries}
    for server in primaries:
        server.available = False
    pool.balancer.refresh(0.0)
    assert set(placement(affinity, pool).values()) == {s.id for s in backups}
